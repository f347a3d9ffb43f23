//! `oris migrate` on PostgreSQL (a fresh database on `ORIS_TEST_PG_URL`; the test command
//! starts a throwaway server): it applies the schema and reports the version, and a second
//! run changes nothing.

mod support;

use std::process::Stdio;

use oris_testkit::database::TestDatabase;
use serde_json::Value;
use support::oris_command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_and_reports_the_schema_version() {
    let database = TestDatabase::create("oris_cli_migrate").await;
    let url = database.url.clone();

    let migrate = |json: bool| {
        let mut c = oris_command();
        c.args(["migrate", "--db", &url]).stdin(Stdio::null());
        if json {
            c.args(["-o", "json"]);
        }
        c.output().unwrap()
    };
    let o = migrate(false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let version: i64 = out
        .trim()
        .strip_prefix("schema version ")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    let o = migrate(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], version, "{v}");
    assert!(v["from"].is_null(), "{v}");
    // The version is the latest row of the store's migrations table.
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = db
        .query_one("SELECT max(version) FROM oris_schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(i64::from(row.get::<_, i32>(0)), version);
    drop(db);

    database.drop_it().await;
}
