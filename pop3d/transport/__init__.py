"""The transport layer: how bytes are protected on the wire (TLS for pop3s and STLS; an
external layer declared with -p). Its output is a security strength factor and, for TLS,
the facts the policy and the SASL layer need."""
