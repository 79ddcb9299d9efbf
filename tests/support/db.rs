//! Test databases: a fresh SQLite file, and a fresh PostgreSQL database.
