//! Throwaway databases on the test PostgreSQL server, for the tests that
//! need a real one.

use tokio_postgres::{Client, NoTls};

/// The test server's admin URL, from `ATLAS_TEST_POSTGRES_URL`.
///
/// # Panics
/// When the variable is not set: a test that needs the server must fail,
/// not pass, without one.
pub fn admin_url() -> String {
    std::env::var("ATLAS_TEST_POSTGRES_URL")
        .expect("ATLAS_TEST_POSTGRES_URL must name a PostgreSQL server (cargo xtask test sets it)")
}

/// A connection to `url`, driven on the current runtime.
///
/// # Panics
/// When the server cannot be reached.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(conn);
    client
}

/// A fresh database with a random name, dropped (with its connections)
/// when the value is dropped, even on panic.
#[derive(Debug)]
pub struct ThrowawayDatabase {
    name: String,
}

impl ThrowawayDatabase {
    /// Creates a database named `{prefix}_` and random hex digits.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create(prefix: &str) -> Self {
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        connect(&admin_url())
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        ThrowawayDatabase { name }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the database: the admin URL with its database replaced.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }
}

impl Drop for ThrowawayDatabase {
    fn drop(&mut self) {
        // Its own thread and runtime: drop may run inside or outside one.
        let name = self.name.clone();
        let url = admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = connect(&url)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}
