//! The parts of connecting that need no server: URLs checked, redacted and
//! stripped of their login, bad files and seeds refused before anything is
//! sent, and secrets absent from every `Debug` and error.

use super::*;

#[test]
fn urls_are_checked_and_redacted() {
    assert!(check_url("nats://127.0.0.1:4222").is_ok());
    assert!(check_url("nats://a:1, tls://b:2").is_ok());
    for bad in [
        "notaurl",
        "",
        "http://x:1",
        "nats://",
        "nats://:4222",
        "127.0.0.1:4222",
    ] {
        assert!(
            matches!(check_url(bad), Err(ClusterError::InvalidUrl { .. })),
            "{bad}"
        );
    }
    assert_eq!(
        redact_url("nats://user:s3cret@h:4222,nats://h2:1"),
        "nats://***@h:4222,nats://h2:1"
    );
    let err = check_url("http://user:s3cret@h:1").unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[test]
fn a_urls_login_is_taken_out_of_it() {
    let (bare, login) = split_userinfo("nats://w%40x:p%3Ass@h:4222, nats://h2:1");
    assert_eq!(bare, "nats://h:4222,nats://h2:1");
    assert_eq!(
        login,
        Some(NatsCredentials::UserPassword {
            user: "w@x".into(),
            password: Secret::new("p:ss"),
        })
    );
    let (bare, login) = split_userinfo("tls://tok3n@h:1");
    assert_eq!(bare, "tls://h:1");
    assert_eq!(login, Some(NatsCredentials::Token(Secret::new("tok3n"))));
    assert_eq!(split_userinfo("nats://h:1"), ("nats://h:1".into(), None));
}

#[test]
fn debug_of_the_options_shows_no_secret() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    for options in [
        NatsOptions::new().with_user_password("worker", Secret::new("pw-hunter2")),
        NatsOptions::new().with_token(Secret::new("pw-hunter2")),
        NatsOptions::new().with_nkey_seed(Secret::new(seed.clone())),
        NatsOptions::new().with_jwt(Secret::new("pw-hunter2"), Secret::new(seed.clone())),
    ] {
        let shown = format!("{options:?}");
        assert!(!shown.contains("pw-hunter2"), "{shown}");
        assert!(!shown.contains(&seed), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
    }
    let shown = format!(
        "{:?}",
        NatsOptions::new().with_user_password("worker", Secret::new("x"))
    );
    assert!(shown.contains("worker"), "the user is not secret: {shown}");
}

#[tokio::test]
async fn unusable_credentials_are_refused_before_connecting() {
    // Port 1: nothing is contacted, the settings are refused first.
    let url = "nats://127.0.0.1:1";
    let not_a_seed = "SUnot-a-seed-pw-hunter2";
    let err = connect_with(
        url,
        "t",
        &NatsOptions::new().with_nkey_seed(Secret::new(not_a_seed)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClusterError::Credentials(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    let missing = std::env::temp_dir().join("colloquy-no-such-ca.pem");
    let err = connect_with(url, "t", &NatsOptions::new().with_ca(&missing))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Credentials(m) if m.contains("colloquy-no-such-ca.pem")),
        "{err:?}"
    );
    let creds = std::env::temp_dir().join(format!("colloquy-bad-{}.creds", std::process::id()));
    std::fs::write(&creds, "not a creds file pw-hunter2").unwrap();
    let err = connect_with(url, "t", &NatsOptions::new().with_creds_file(&creds))
        .await
        .unwrap_err();
    std::fs::remove_file(&creds).unwrap();
    assert!(
        matches!(&err, ClusterError::Credentials(m) if m.contains("creds file")),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    let mut half = NatsOptions::new();
    half.tls.client_cert = Some(missing.clone());
    let err = connect_with(url, "t", &half).await.unwrap_err();
    assert!(matches!(err, ClusterError::Credentials(_)), "{err:?}");
    let both = NatsOptions::new().with_token(Secret::new("t"));
    let err = connect_with("nats://u:pw-hunter2@127.0.0.1:1", "t", &both)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Credentials(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("nats://u:pw-hunter2@127.0.0.1:{port}");
    let err = connect(&url, "t").await.unwrap_err();
    match &err {
        ClusterError::Connect { failure, url, .. } => {
            assert_eq!(*failure, ConnectFailure::Unreachable, "{err}");
            assert_eq!(url, &format!("nats://***@127.0.0.1:{port}"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
}
