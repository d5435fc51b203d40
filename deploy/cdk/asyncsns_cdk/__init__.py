"""The asyncsns AWS deployment: one CDK stack per concern, all derived from stack.topology."""
