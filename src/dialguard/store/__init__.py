"""PostgreSQL adapter: the pool, migrations, the embedded server and every query."""
