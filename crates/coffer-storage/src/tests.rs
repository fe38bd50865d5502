use super::*;

fn exercise(store: &dyn BlobStore) {
    store.put("data/ab/abcd", b"0123456789").unwrap();
    store.put("index/01", b"i").unwrap();
    store.put("config", b"c").unwrap();
    assert_eq!(store.get_range("data/ab/abcd", 2, 3).unwrap(), b"234");
    assert!(matches!(
        store.get_range("data/ab/abcd", 8, 3),
        Err(StorageError::ShortRead { size: 10, .. })
    ));
    assert!(matches!(
        store.get("nope"),
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(
        store.put_if_absent("index/01", b"x").unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get("index/01").unwrap(), b"i");
    assert_eq!(
        store.put_if_absent("index/02", b"y").unwrap(),
        PutOutcome::Created
    );
    let names: Vec<String> = store
        .list("data/")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["data/ab/abcd"]);
    let names: Vec<String> = store
        .list("index/")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["index/01", "index/02"]);
    assert_eq!(store.list("").unwrap().len(), 4);
    store.delete("index/01").unwrap();
    store.delete("index/01").unwrap();
    assert_eq!(store.list("index/").unwrap().len(), 1);
}

#[test]
fn local_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("repo"));
    exercise(&store);
    // No temporary files are left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("repo/.tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn mem_store_contract() {
    exercise(&MemStore::default());
}

#[test]
fn open_picks_the_backend_from_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let local = open(path.to_str().unwrap()).unwrap();
    assert_eq!(local.location(), path.display().to_string());
    assert_eq!(local.create_mode(), CreateMode::Atomic);
    let url = format!("file://{}", path.display());
    assert_eq!(open(&url).unwrap().location(), path.display().to_string());
    // A cloud URL: a CloudStore behind a RetryStore; no request is sent yet.
    let dav = open("webdav://me:secret@127.0.0.1:9/repo").unwrap();
    assert_eq!(dav.location(), "webdav://me@127.0.0.1:9/repo");
    assert_eq!(dav.create_mode(), CreateMode::CheckThenWrite);
    let err = open("ftp://host/x").err().unwrap().to_string();
    assert!(err.contains("ftp://"), "{err}");
}

#[test]
fn errors_name_the_object_and_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().to_path_buf());
    let msg = store.get("index/00").unwrap_err().to_string();
    assert!(
        msg.contains("index/00") && msg.contains("not found"),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    store.put("data/x", b"0123").unwrap();
    let msg = store.get_range("data/x", 2, 4).unwrap_err().to_string();
    assert!(
        msg.contains("data/x") && msg.contains("shorter than expected"),
        "{msg}"
    );
}
