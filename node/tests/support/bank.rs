//! The bank workload's transfer, shared by the tests that run it.

/// The rest of a transfer whose BEGIN has run: `amount` from account
/// `from` to account `to`, then COMMIT.
pub async fn transfer_and_commit(
    client: &tokio_postgres::Client,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            &[&amount, &from],
        )
        .await?;
    client
        .execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            &[&amount, &to],
        )
        .await?;
    client.batch_execute("COMMIT").await
}
