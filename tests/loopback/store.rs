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

/// Servers sharing a database (`[store] shared`) and a server serving it
/// alone refuse each other, each with a reason that names the setting; two
/// shared servers of one `server_name` are refused too; a name is free
/// again once its server's connection closed (what an HA partner watches).
#[tokio::test]
async fn shared_and_lone_servers_refuse_each_other_and_names_are_one_each() {
    let server = TestServer::full("").await;
    let Some(url) = test_store_url(server.dir.path()).await else {
        eprintln!("store: SQLite pass; the PostgreSQL pass checks this");
        return;
    };
    // The test server serves the database alone.
    let err = Store::open_shared(&url, Some("a"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::SoloServer), "{err}");
    assert!(err.to_string().contains("shared = true"), "{err}");
    let _dir = server.stop().await;

    let a = Store::open_shared(&url, Some("a")).await.expect("shared a");
    let b = Store::open_shared(&url, Some("b")).await.expect("shared b");
    let err = Store::open_postgres(&url)
        .await
        .err()
        .expect("a lone server is refused");
    assert!(matches!(err, StoreError::InUse), "{err}");
    assert!(err.to_string().contains("shared = true"), "{err}");
    let err = Store::open_shared(&url, Some("a"))
        .await
        .err()
        .expect("one a");
    assert!(
        matches!(err, StoreError::NameInUse(ref n) if n == "a"),
        "{err}"
    );

    assert!(b.server_alive("a").await.unwrap(), "a holds its name");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.server_alive("a").await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "a's name still held 5 s after it closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !b.server_alive("nobody").await.unwrap(),
        "a server that never ran"
    );
}
