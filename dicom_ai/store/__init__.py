"""The store: spool on disk, audit database, study stability and the durable job queue."""
