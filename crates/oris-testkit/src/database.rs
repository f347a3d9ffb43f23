//! A throwaway PostgreSQL database for a test, on the server at `ORIS_TEST_PG_URL` (the
//! test command, `scripts/test.sh`, installs and starts one). Feature `postgres`.

/// A fresh database, dropped by [`TestDatabase::drop_it`].
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// Its URL: the server's, with this database.
    pub url: String,
}

impl TestDatabase {
    /// Creates the database `{prefix}_{uuid}`.
    ///
    /// # Panics
    /// If `ORIS_TEST_PG_URL` is not set or the server refuses: the test cannot run.
    pub async fn create(prefix: &str) -> TestDatabase {
        let admin_url = std::env::var("ORIS_TEST_PG_URL").expect(
            "ORIS_TEST_PG_URL is not set: this test needs a PostgreSQL server (scripts/test.sh \
             starts one)",
        );
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        admin(&admin_url, &format!("CREATE DATABASE {name}")).await;
        let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database");
        let url = format!("{base}/{name}");
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// Drops the database, closing the connections still open to it.
    pub async fn drop_it(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        admin(&self.admin_url, &sql).await;
    }
}

/// Runs `sql` on a connection of its own to `url`.
async fn admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to ORIS_TEST_PG_URL");
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}
