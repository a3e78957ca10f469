//! The store's backends, as a server sees them at start.

use ironboot::store::{Store, StoreError};

use crate::common::{test_store_url, TestServer};

/// A second server on a PostgreSQL database one already uses is refused at
/// start, with the reason; once the first stops (or dies: the lock goes
/// with its connection), the database opens again. On SQLite (the tests'
/// first pass) there is nothing to share, and the test says so.
#[tokio::test]
async fn a_second_server_on_one_postgres_database_is_refused() {
    let server = TestServer::full("").await;
    let Some(url) = test_store_url(server.dir.path()).await else {
        eprintln!("store: SQLite pass; the PostgreSQL pass checks this");
        return;
    };
    let second = Store::open_postgres(&url).await;
    let err = second.err().expect("a second server on the same database");
    assert!(matches!(err, StoreError::InUse), "{err}");
    assert!(err.to_string().contains("another ironboot server"), "{err}");

    let _dir = server.stop().await;
    let reopened = Store::open_postgres(&url).await;
    assert!(reopened.is_ok(), "free again once the first stopped");
}
