//! Which stack manages a schema: one row in the schema's `_metricsstack_owner` table,
//! written by the first stack that converges the schema and removed when that stack is
//! deleted. Two stacks on one database keep to their own schemas; a second stack on a
//! schema already managed is refused instead of dropping the first's policies as strays.

use sqlx::PgPool;

use super::DatabaseError;
use super::apply::qualified;

/// The table, in the stack's schema, naming the stack that manages the schema.
pub const OWNER_TABLE: &str = "_metricsstack_owner";

/// Records `owner` (`namespace/name`) as the stack managing `schema` (which exists) unless
/// another stack is recorded: then [`DatabaseError::Conflict`]. A schema already claimed by
/// `owner` is only read.
pub async fn claim(pool: &PgPool, schema: &str, owner: &str) -> Result<(), DatabaseError> {
    let table = qualified(schema, OWNER_TABLE);
    if !exists(pool, &table).await? {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), \
               stack text NOT NULL)"
        )))
        .execute(pool)
        .await
        .map_err(DatabaseError::statement(
            "creating the schema's owner table",
        ))?;
    }
    let recorded: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT stack FROM {table}")))
            .fetch_optional(pool)
            .await
            .map_err(DatabaseError::statement("reading the schema's owner"))?;
    let recorded = match recorded {
        Some(recorded) => recorded,
        None => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (stack) VALUES ($1) \
             ON CONFLICT (singleton) DO UPDATE SET stack = {table}.stack RETURNING stack"
        )))
        .bind(owner)
        .fetch_one(pool)
        .await
        .map_err(DatabaseError::statement("recording the schema's owner"))?,
    };
    if recorded == owner {
        Ok(())
    } else {
        Err(DatabaseError::Conflict {
            schema: schema.to_owned(),
            other: recorded,
        })
    }
}

/// Forgets `owner` as the stack managing `schema`, so that another stack may take it over;
/// nothing when another stack (or none) is recorded.
pub async fn release(pool: &PgPool, schema: &str, owner: &str) -> Result<(), DatabaseError> {
    let table = qualified(schema, OWNER_TABLE);
    if exists(pool, &table).await? {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE stack = $1"
        )))
        .bind(owner)
        .execute(pool)
        .await
        .map_err(DatabaseError::statement("forgetting the schema's owner"))?;
    }
    Ok(())
}

/// Whether the owner table `table` (schema-qualified) exists.
async fn exists(pool: &PgPool, table: &str) -> Result<bool, DatabaseError> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(DatabaseError::statement(
            "looking for the schema's owner table",
        ))
}
