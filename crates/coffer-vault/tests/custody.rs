#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Key custody of the realm master secret, against the filesystem and a REAL
//! SoftHSM2 token. SoftHSM must be installed (`scripts/setup-softhsm.sh`);
//! without it the PKCS#11 test fails rather than skips.
//!
//! Only `pkcs11_softhsm` touches the process environment (SOFTHSM2_CONF,
//! COFFER_PKCS11_PIN), and it runs all PKCS#11 cases in sequence inside one
//! test function, under `ENV_LOCK`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use clap::Parser;
use coffer_vault::custody::{
    create_master, describe, load_master, CustodyArgs, CustodyError, PKCS11_BLOB_FILE,
    SOFTWARE_KEY_FILE,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";
const SO_PIN: &str = "5678";

static ENV_LOCK: Mutex<()> = Mutex::new(());

fn software_args() -> CustodyArgs {
    CustodyArgs {
        pkcs11_module: None,
        pkcs11_token: "coffer".into(),
        pkcs11_pin_file: None,
        pkcs11_key_label: "coffer-realm-wrap".into(),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_send_sync_static<T: Send + Sync + 'static>() {}

#[test]
fn error_is_anyhow_compatible() {
    assert_send_sync_static::<CustodyError>();
    let e: anyhow::Error = CustodyError::MissingPin.into();
    assert!(e.to_string().contains("COFFER_PKCS11_PIN"));
}

#[test]
fn clap_defaults() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        custody: CustodyArgs,
    }
    let cli = Cli::try_parse_from([
        "coffer-vault",
        "--pkcs11-module",
        "/x/libfoo.so",
        "--pkcs11-pin-file",
        "/run/pin",
    ])
    .unwrap();
    assert_eq!(
        cli.custody.pkcs11_module,
        Some(PathBuf::from("/x/libfoo.so"))
    );
    assert_eq!(cli.custody.pkcs11_pin_file, Some(PathBuf::from("/run/pin")));
    assert_eq!(cli.custody.pkcs11_key_label, "coffer-realm-wrap");
    if std::env::var_os("COFFER_PKCS11_TOKEN").is_none() {
        assert_eq!(cli.custody.pkcs11_token, "coffer");
    }
}

#[test]
fn software_mode() {
    let tmp = tempfile::tempdir().unwrap();
    // A data directory that does not exist yet is created, private.
    let data = tmp.path().join("data");
    let args = software_args();
    assert!(describe(&args).contains("software key file"));

    // Load before init: clear "run init" error.
    let err = load_master(&args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::MissingKeyFile { .. }), "{err}");
    assert!(err.to_string().contains("coffer-vault init"), "{err}");

    let created = create_master(&args, &data).unwrap();
    assert_eq!(format!("{created:?}"), "MasterSecret(REDACTED)");
    assert_ne!(created.expose_secret(), &[0u8; 32]);
    let path = data.join(SOFTWARE_KEY_FILE);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&data), 0o700);
    // Documented format: one line, 64 lowercase hex digits.
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}\n", hex::encode(created.expose_secret())));
    // No temporary file left behind.
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

    let loaded = load_master(&args, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());

    // Refuse to overwrite; the original survives.
    let err = create_master(&args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("refuses to overwrite"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), text);

    // Group/world readable: refused, like ssh.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_master(&args, &data).unwrap_err();
    assert!(
        matches!(err, CustodyError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        load_master(&args, &data).unwrap_err(),
        CustodyError::InsecurePermissions { .. }
    ));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    let loaded = load_master(&args, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());

    // Garbage content: malformed, without echoing the content.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&path, "zz-not-hex-but-secretish\n").unwrap();
    let err = load_master(&args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::Malformed { .. }), "{err}");
    assert!(!err.to_string().contains("secretish"), "{err}");

    // Asking for PKCS#11 on a software realm: hint to drop --pkcs11-module.
    let mut p11_args = software_args();
    p11_args.pkcs11_module = Some(PathBuf::from(DEFAULT_MODULE));
    let err = load_master(&p11_args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::MissingKeyFile { .. }), "{err}");
    assert!(err.to_string().contains("omit --pkcs11-module"), "{err}");
    // And init in PKCS#11 mode refuses too: the realm already has a master.
    let err = create_master(&p11_args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::AlreadyExists { .. }), "{err}");
}

#[test]
fn missing_module_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = software_args();
    args.pkcs11_module = Some(tmp.path().join("no-such-module.so"));
    let pin_file = tmp.path().join("pin");
    fs::write(&pin_file, "1234\n").unwrap();
    args.pkcs11_pin_file = Some(pin_file);
    let err = create_master(&args, &tmp.path().join("data")).unwrap_err();
    assert!(matches!(err, CustodyError::ModuleLoad { .. }), "{err}");
    assert!(err.to_string().contains("no-such-module.so"), "{err}");

    // Not a shared library at all.
    let bogus = tmp.path().join("bogus.so");
    fs::write(&bogus, "not an ELF").unwrap();
    args.pkcs11_module = Some(bogus);
    let err = create_master(&args, &tmp.path().join("data")).unwrap_err();
    assert!(matches!(err, CustodyError::ModuleLoad { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// SoftHSM2

fn module_path() -> PathBuf {
    let module = std::env::var_os("COFFER_TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE));
    assert!(
        module.exists(),
        "PKCS#11 module {} not found: SoftHSM2 is required for these tests. \
         Run scripts/setup-softhsm.sh (or set COFFER_TEST_PKCS11_MODULE).",
        module.display()
    );
    module
}

fn init_token(conf: &Path, label: &str) {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}): run scripts/setup-softhsm.sh"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inspects the wrapping key directly through cryptoki: it must be a
/// sensitive, non-extractable, private token object whose value cannot be
/// read or wrapped out.
/// Runs `f` in a read-write session (not logged in) on the token labelled
/// `token`, then finalizes the library.
fn in_session(module: &Path, token: &str, f: impl FnOnce(&Session)) {
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    {
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
            .unwrap();
        f(&ctx.open_rw_session(slot).unwrap());
    }
    ctx.finalize().unwrap();
}

fn check_key_object(module: &Path, token: &str, key_label: &str) {
    in_session(module, token, |session| {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ];
        // CKA_PRIVATE=true: invisible before login.
        assert!(session.find_objects(&template).unwrap().is_empty());
        session
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .unwrap();
        let keys = session.find_objects(&template).unwrap();
        assert_eq!(keys.len(), 1);
        let key = keys[0];

        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::ValueLen,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                ],
            )
            .unwrap();
        for want in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
        ] {
            assert!(attrs.contains(&want), "missing {want:?} in {attrs:?}");
        }
        assert!(
            attrs
                .iter()
                .any(|a| matches!(a, Attribute::ValueLen(l) if usize::from(*l) == 32)),
            "{attrs:?}"
        );

        // CKA_VALUE cannot be read: the token says "sensitive", and
        // get_attributes silently leaves it out.
        let info = session
            .get_attribute_info(key, &[AttributeType::Value])
            .unwrap();
        assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
        let value = session
            .get_attributes(key, &[AttributeType::Value])
            .unwrap();
        assert!(
            !value.iter().any(|a| matches!(a, Attribute::Value(_))),
            "CKA_VALUE was readable"
        );

        // Nor can it be wrapped out under another key.
        let wrapper = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32usize.try_into().unwrap()),
                    Attribute::Token(false),
                    Attribute::Wrap(true),
                ],
            )
            .unwrap();
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapper, key);
        assert!(wrapped.is_err(), "the wrapping key could be wrapped out");

        session.logout().unwrap();
    });
}

/// Imports an AES-256 key from outside the token (C_CreateObject with its
/// value): sensitive and non-extractable now, but CKA_ALWAYS_SENSITIVE and
/// CKA_NEVER_EXTRACTABLE false, as for any key that existed outside it.
fn import_key(module: &Path, token: &str, key_label: &str) {
    in_session(module, token, |session| {
        session
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .unwrap();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(key_label.as_bytes().to_vec()),
                Attribute::Value(vec![0x42; 32]),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ])
            .unwrap();
        session.logout().unwrap();
    });
}

#[test]
fn pkcs11_softhsm() {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let module = module_path();

    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    fs::create_dir(&tokens).unwrap();
    let conf = tmp.path().join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::remove_var("COFFER_PKCS11_PIN");

    let pin_file = tmp.path().join("pin");
    fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let wrong_pin_file = tmp.path().join("wrong-pin");
    fs::write(&wrong_pin_file, "9999\n").unwrap();

    let data = tmp.path().join("data");
    let args = CustodyArgs {
        pkcs11_module: Some(module.clone()),
        pkcs11_token: "coffer".into(),
        pkcs11_pin_file: Some(pin_file.clone()),
        pkcs11_key_label: "coffer-realm-wrap".into(),
    };
    assert_eq!(
        describe(&args),
        format!(
            "PKCS#11 token 'coffer' via {} (wrapping key 'coffer-realm-wrap')",
            module.display()
        )
    );

    // No token yet: "not found", listing what was found (nothing).
    let err = create_master(&args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::TokenNotFound { .. }), "{err}");
    assert!(err.to_string().contains("tokens found: none"), "{err}");
    assert!(!data.join(PKCS11_BLOB_FILE).exists());

    init_token(&conf, "coffer");

    // Wrong token label: the error lists the labels found.
    let mut other_label = args.clone();
    other_label.pkcs11_token = "nope".into();
    let err = create_master(&other_label, &data).unwrap_err();
    assert!(
        matches!(&err, CustodyError::TokenNotFound { found, .. } if found == &["coffer".to_string()]),
        "{err}"
    );
    assert!(err.to_string().contains("tokens found: 'coffer'"), "{err}");

    // No PIN at all.
    let mut no_pin = args.clone();
    no_pin.pkcs11_pin_file = None;
    let err = create_master(&no_pin, &data).unwrap_err();
    assert!(matches!(err, CustodyError::MissingPin), "{err}");
    let mut missing_pin_file = args.clone();
    missing_pin_file.pkcs11_pin_file = Some(tmp.path().join("no-such-pin"));
    let err = create_master(&missing_pin_file, &data).unwrap_err();
    assert!(matches!(err, CustodyError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no-such-pin"), "{err}");

    // Wrong PIN at create: clear error, nothing written.
    let mut wrong_pin = args.clone();
    wrong_pin.pkcs11_pin_file = Some(wrong_pin_file.clone());
    let err = create_master(&wrong_pin, &data).unwrap_err();
    assert!(matches!(err, CustodyError::WrongPin { .. }), "{err}");
    assert!(!err.to_string().contains("9999"), "{err}");
    assert!(!data.join(PKCS11_BLOB_FILE).exists());

    // Create: generates the wrapping key, writes the blob.
    let created = create_master(&args, &data).unwrap();
    let blob_path = data.join(PKCS11_BLOB_FILE);
    assert_eq!(mode(&blob_path), 0o600);
    assert!(!data.join(SOFTWARE_KEY_FILE).exists());
    let blob_text = fs::read_to_string(&blob_path).unwrap();
    assert!(blob_text.ends_with('\n') && blob_text.lines().count() == 1);
    let blob: serde_json::Value = serde_json::from_str(&blob_text).unwrap();
    assert_eq!(blob["version"], 1);
    assert_eq!(blob["token_label"], "coffer");
    assert_eq!(blob["key_label"], "coffer-realm-wrap");
    assert_eq!(blob["iv"].as_str().unwrap().len(), 24);
    assert_eq!(blob["ciphertext"].as_str().unwrap().len(), 2 * (32 + 16));
    // The secret is not on disk in any form we can recognise.
    let secret_hex = hex::encode(created.expose_secret());
    assert!(!blob_text.contains(&secret_hex));
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

    // Load: same secret.
    let loaded = load_master(&args, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());
    // Again (C_Finalize/C_Initialize round trip in one process).
    let loaded = load_master(&args, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());

    // PIN from the environment instead of a file.
    std::env::set_var("COFFER_PKCS11_PIN", PIN);
    let loaded = load_master(&no_pin, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());
    std::env::remove_var("COFFER_PKCS11_PIN");

    // Init refuses to overwrite, and the blob is untouched.
    let err = create_master(&args, &data).unwrap_err();
    assert!(matches!(err, CustodyError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read_to_string(&blob_path).unwrap(), blob_text);

    // Wrong PIN at load.
    let err = load_master(&wrong_pin, &data).unwrap_err();
    assert!(matches!(err, CustodyError::WrongPin { .. }), "{err}");
    assert!(err.to_string().contains("wrong PIN"), "{err}");

    // Software mode on a PKCS#11 realm: hint to pass --pkcs11-module.
    let err = load_master(&software_args(), &data).unwrap_err();
    assert!(err.to_string().contains("pass --pkcs11-module"), "{err}");

    // The key object: sensitive, non-extractable, CKA_VALUE unreadable.
    check_key_object(&module, "coffer", "coffer-realm-wrap");

    // Tampered blob: every single flipped ciphertext/tag byte is caught.
    let tampered_dir = tmp.path().join("tampered");
    fs::create_dir(&tampered_dir).unwrap();
    let tampered_path = tampered_dir.join(PKCS11_BLOB_FILE);
    let ct = hex::decode(blob["ciphertext"].as_str().unwrap()).unwrap();
    for i in [0, 31, 32, 47] {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        let mut b = blob.clone();
        b["ciphertext"] = hex::encode(&bad).into();
        fs::write(&tampered_path, b.to_string()).unwrap();
        let err = load_master(&args, &tampered_dir).unwrap_err();
        assert!(
            matches!(err, CustodyError::UnwrapFailed { .. }),
            "byte {i}: {err}"
        );
        assert!(err.to_string().contains("tampered"), "{err}");
    }
    // Tampered IV.
    let mut b = blob.clone();
    let mut iv = hex::decode(blob["iv"].as_str().unwrap()).unwrap();
    iv[0] ^= 0x80;
    b["iv"] = hex::encode(&iv).into();
    fs::write(&tampered_path, b.to_string()).unwrap();
    let err = load_master(&args, &tampered_dir).unwrap_err();
    assert!(matches!(err, CustodyError::UnwrapFailed { .. }), "{err}");
    // Truncated ciphertext.
    let mut b = blob.clone();
    b["ciphertext"] = hex::encode(&ct[..20]).into();
    fs::write(&tampered_path, b.to_string()).unwrap();
    let err = load_master(&args, &tampered_dir).unwrap_err();
    assert!(matches!(err, CustodyError::UnwrapFailed { .. }), "{err}");
    // Not JSON / bad version: malformed.
    fs::write(&tampered_path, "{}").unwrap();
    let err = load_master(&args, &tampered_dir).unwrap_err();
    assert!(matches!(err, CustodyError::Malformed { .. }), "{err}");
    let mut b = blob.clone();
    b["version"] = 2.into();
    fs::write(&tampered_path, b.to_string()).unwrap();
    let err = load_master(&args, &tampered_dir).unwrap_err();
    assert!(matches!(err, CustodyError::Malformed { .. }), "{err}");

    // A second token without the wrapping key: "key not found", naming the
    // token and key the blob was made with.
    init_token(&conf, "coffer-other");
    let mut other = args.clone();
    other.pkcs11_token = "coffer-other".into();
    let err = load_master(&other, &data).unwrap_err();
    assert!(matches!(err, CustodyError::KeyNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("not found in PKCS#11 token 'coffer-other'"),
        "{msg}"
    );
    assert!(msg.contains("made with token 'coffer'"), "{msg}");

    // A second realm on the other token gets its own key; unwrapping the
    // first realm's blob with that (different) key fails as "unwrap failed".
    let data2 = tmp.path().join("data2");
    let created2 = create_master(&other, &data2).unwrap();
    assert_ne!(created2.expose_secret(), created.expose_secret());
    let loaded2 = load_master(&other, &data2).unwrap();
    assert_eq!(loaded2.expose_secret(), created2.expose_secret());
    let err = load_master(&other, &data).unwrap_err();
    assert!(matches!(err, CustodyError::UnwrapFailed { .. }), "{err}");
    assert!(err.to_string().contains("wrong token"), "{err}");

    // Reusing an existing key: a second realm on the first token.
    let data3 = tmp.path().join("data3");
    let created3 = create_master(&args, &data3).unwrap();
    let loaded3 = load_master(&args, &data3).unwrap();
    assert_eq!(loaded3.expose_secret(), created3.expose_secret());
    // The first realm still loads.
    let loaded = load_master(&args, &data).unwrap();
    assert_eq!(loaded.expose_secret(), created.expose_secret());

    // A key that was ever outside the token (imported, CKA_VALUE given) is
    // refused, though sensitive and non-extractable now: nothing written.
    import_key(&module, "coffer", "imported-wrap");
    let mut imported = args.clone();
    imported.pkcs11_key_label = "imported-wrap".into();
    let data4 = tmp.path().join("data4");
    let err = create_master(&imported, &data4).unwrap_err();
    assert!(matches!(err, CustodyError::KeyPolicy { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("CKA_NEVER_EXTRACTABLE is false"), "{msg}");
    assert!(msg.contains("CKA_ALWAYS_SENSITIVE is false"), "{msg}");
    assert!(!msg.contains("CKA_TOKEN"), "{msg}");
    assert!(!data4.join(PKCS11_BLOB_FILE).exists());

    std::env::remove_var("SOFTHSM2_CONF");
}
