"""The toy world: synthetic captioned scenes (`scenes`) and a pixel judge that reads them back (`judge`)."""
