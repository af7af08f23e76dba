"""What requests cost: token estimates, the admission charge, usage as backends report it, and ledger queries."""
