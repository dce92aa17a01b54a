"""Who the client is: identity rules, the credential store, and the authenticator that
verifies passwords for every login method."""
