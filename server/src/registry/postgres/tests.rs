//! Unit tests of the PostgreSQL backend's pure parts: how it names the database.

use super::*;

fn name_of(url: &str, password: Option<&str>) -> String {
    let mut config = Config::from_str(url).unwrap();
    if let Some(p) = password {
        config.password(p);
    }
    display_name(&config)
}

#[test]
fn the_name_never_includes_the_password() {
    for url in [
        "postgres://reg:s3cret-pw@db.example:5433/fleet",
        "postgres://reg@db.example:5433/fleet?password=s3cret-pw",
        "host=db.example port=5433 user=reg password=s3cret-pw dbname=fleet",
    ] {
        let name = name_of(url, Some("s3cret-pw"));
        assert_eq!(name, "postgres://reg@db.example:5433/fleet", "{url}");
        assert!(!name.contains("s3cret"), "{name}");
    }
}

#[test]
fn the_name_shows_unix_sockets_several_hosts_and_defaults() {
    assert_eq!(
        name_of("postgres://reg@%2Frun%2Fpostgresql/fleet", None),
        "postgres://reg@/run/postgresql:5432/fleet",
        "the port names the socket file: shown, default or not"
    );
    assert_eq!(
        name_of("postgres://reg@a:1,b:2/fleet", None),
        "postgres://reg@a:1,b:2/fleet"
    );
    // No database: PostgreSQL uses the user's name.
    assert_eq!(
        name_of("postgres://reg@h", None),
        "postgres://reg@h:5432/reg"
    );
}

#[test]
fn an_unparsable_url_is_named_without_its_password() {
    for (url, shown) in [
        (
            "postgres://reg:s3cret-pw@db:notaport/fleet",
            "postgres://reg@db:notaport/fleet",
        ),
        (
            "postgres://reg@db/fleet?password=s3cret-pw&bogus=1",
            "postgres://reg@db/fleet?bogus=1",
        ),
        (
            "host=db password=s3cret-pw dbname=fleet bogus",
            "host=db dbname=fleet",
        ),
    ] {
        assert_eq!(redact_url(url), shown);
    }
    let err = PostgresStore::connect("postgres://reg:s3cret-pw@db:notaport/fleet", None)
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.contains("postgres://reg@db:notaport/fleet"), "{err}");
    assert!(err.contains("not a PostgreSQL URL"), "{err}");
}

#[test]
fn tls_is_refused_before_connecting_with_what_to_do() {
    let err = PostgresStore::connect("postgres://reg@db.invalid/fleet?sslmode=require", None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("TLS to the database is not supported yet"),
        "{err}"
    );
    assert!(err.contains("Unix socket"), "{err}");
}
