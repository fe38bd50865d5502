//! The daemon with its master secret in a PKCS#11 token (SoftHSM2, which
//! scripts/setup-softhsm.sh installs): init, serve, a login, a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Outcome, Vault};

#[test]
fn a_realm_whose_master_secret_is_wrapped_by_a_softhsm_token() {
    let module = std::env::var("COFFER_TEST_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    assert!(
        std::path::Path::new(&module).exists(),
        "{module} missing: run scripts/setup-softhsm.sh (CI does)"
    );
    let hsm = tempfile::tempdir().unwrap();
    let conf = hsm.path().join("softhsm2.conf");
    std::fs::create_dir_all(hsm.path().join("tokens")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            hsm.path().join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "coffer",
            "--pin",
            "4321",
            "--so-pin",
            "8765",
        ])
        .output()
        .expect("softhsm2-util: run scripts/setup-softhsm.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf_s = conf.display().to_string();
    let env = [
        ("SOFTHSM2_CONF", conf_s.as_str()),
        ("COFFER_PKCS11_PIN", "4321"),
        ("COFFER_PKCS11_MODULE", module.as_str()),
    ];
    let mut v = Vault::new(&[], &[], &env);
    assert!(v.data.join("realm.key.p11").exists());
    assert!(
        !v.data.join("realm.key").exists(),
        "no software key file in PKCS#11 mode"
    );
    let c = v.client("chat", "hsm-user");
    let k = [0x33; 32];
    assert_eq!(c.register(b"pw", &k, 10), Outcome::Ok(None));
    v.stop();
    v.start();
    assert_eq!(c.login(b"pw").outcome, Outcome::Ok(Some(k)));
    v.stop();
    // Without the token's PIN the daemon cannot start: the data directory alone is useless.
    let out = Command::new(common::BIN)
        .env("SOFTHSM2_CONF", &conf)
        .env("COFFER_PKCS11_MODULE", &module)
        .env("COFFER_PKCS11_PIN", "0000")
        .args(["serve", "--data"])
        .arg(&v.data)
        .arg("--nvram")
        .arg(&v.nvram)
        .args(["--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("pin"), "{err}");
    // And without the module (software mode), it says where the secret is.
    let out = Command::new(common::BIN)
        .env_remove("COFFER_PKCS11_MODULE")
        .args(["serve", "--data"])
        .arg(&v.data)
        .arg("--nvram")
        .arg(&v.nvram)
        .args(["--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pkcs11"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
