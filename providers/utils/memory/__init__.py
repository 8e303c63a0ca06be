"""What the memory-bank providers share: documents to text, chunking, metadata filters, the store seam and the
bank service that ties them to an embedding model."""
