//! The rule from command-line paths and the environment to a login, with a
//! map for an environment.

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn secret_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colloquy-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn nothing_given_is_anonymous() {
    let options = NatsSettings::default().resolve(env_of(&[])).unwrap();
    assert_eq!(options, NatsOptions::default());
}

#[test]
fn a_user_with_a_password_file_or_variable() {
    let file = secret_file("password", "pw-from-file\n");
    let settings = NatsSettings {
        user: Some("worker".into()),
        password_file: Some(file),
        ..Default::default()
    };
    let options = settings.resolve(env_of(&[])).unwrap();
    assert_eq!(
        options.credentials,
        Some(NatsCredentials::UserPassword {
            user: "worker".into(),
            password: Secret::new("pw-from-file"),
        })
    );
    let settings = NatsSettings {
        user: Some("worker".into()),
        ..Default::default()
    };
    let options = settings
        .resolve(env_of(&[("NATS_PASSWORD", "pw-env")]))
        .unwrap();
    assert_eq!(
        options.credentials,
        Some(NatsCredentials::UserPassword {
            user: "worker".into(),
            password: Secret::new("pw-env"),
        })
    );
    // Only the environment.
    let options = NatsSettings::default()
        .resolve(env_of(&[("NATS_USER", "w"), ("NATS_PASSWORD", "pw")]))
        .unwrap();
    assert!(matches!(
        options.credentials,
        Some(NatsCredentials::UserPassword { .. })
    ));
}

#[test]
fn a_user_without_a_password_and_two_logins_are_errors() {
    let settings = NatsSettings {
        user: Some("worker".into()),
        ..Default::default()
    };
    let err = settings.resolve(env_of(&[])).unwrap_err();
    assert!(
        matches!(&err, ClusterError::Credentials(m) if m.contains("no password")),
        "{err}"
    );
    let err = NatsSettings::default()
        .resolve(env_of(&[("NATS_PASSWORD", "pw-hunter2")]))
        .unwrap_err();
    assert!(matches!(err, ClusterError::Credentials(_)), "{err}");
    let err = NatsSettings::default()
        .resolve(env_of(&[
            ("NATS_TOKEN", "tok-hunter2"),
            ("NATS_CREDS", "/x.creds"),
        ]))
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Credentials(m) if m.contains("more than one")),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn flags_win_over_the_environment() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let file = secret_file("seed", &format!("{seed}\n"));
    let settings = NatsSettings {
        nkey_file: Some(file),
        ..Default::default()
    };
    let options = settings
        .resolve(env_of(&[("NATS_TOKEN", "ignored"), ("NATS_CA", "/ca.pem")]))
        .unwrap();
    assert_eq!(
        options.credentials,
        Some(NatsCredentials::NKeySeed(Secret::new(seed)))
    );
    assert_eq!(options.tls.ca, Some(PathBuf::from("/ca.pem")));
}

#[test]
fn tls_paths_and_required_from_either() {
    let options = NatsSettings::default()
        .resolve(env_of(&[
            ("NATS_CERT", "/c.pem"),
            ("NATS_KEY", "/k.pem"),
            ("NATS_TLS_REQUIRED", "true"),
            ("NATS_TOKEN_FILE", ""),
        ]))
        .unwrap();
    assert_eq!(options.tls.client_cert, Some(PathBuf::from("/c.pem")));
    assert_eq!(options.tls.client_key, Some(PathBuf::from("/k.pem")));
    assert!(options.tls.required);
    assert_eq!(options.credentials, None, "an empty variable is unset");
}

#[test]
fn an_unreadable_file_is_named() {
    let settings = NatsSettings {
        token_file: Some(PathBuf::from("/nonexistent/colloquy-token")),
        ..Default::default()
    };
    let err = settings.resolve(env_of(&[])).unwrap_err();
    assert!(
        matches!(&err, ClusterError::Credentials(m) if m.contains("/nonexistent/colloquy-token")),
        "{err}"
    );
}
