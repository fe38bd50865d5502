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
fn cloud_urls_are_refused_clearly() {
    let err = open("s3://bucket/prefix").err().unwrap().to_string();
    assert!(err.contains("s3://"), "{err}");
}
