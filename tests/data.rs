use std::io::Write;

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::data::idx::{encode_idx, read_idx};
use tch::Kind;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn real_fashion_mnist_loads_with_official_sizes() {
    let dir = default_dir();
    for split in [Split::Train, Split::Test] {
        let data = fashion_mnist::load(&dir, split).unwrap();
        assert_eq!(data.len(), fashion_mnist::official_len(split));
        assert_eq!(data.images.size(), vec![fashion_mnist::official_len(split) as i64, 1, 28, 28]);
        assert_eq!(data.images.kind(), Kind::Float);
        assert!(data.images.min().double_value(&[]) >= 0.0);
        assert!(data.images.max().double_value(&[]) <= 1.0);
        // Every class is present, in equal numbers (the data set is balanced).
        let counts = data.labels.bincount::<tch::Tensor>(None, 10);
        assert_eq!(counts.size(), vec![10]);
        let per_class = fashion_mnist::official_len(split) as i64 / 10;
        assert_eq!(counts.min().int64_value(&[]), per_class);
        assert_eq!(counts.max().int64_value(&[]), per_class);
    }
}

#[test]
fn idx_gz_good_truncated_and_corrupted_files() {
    let dir = tempfile::tempdir().unwrap();
    let raw = encode_idx(&[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
    let good = dir.path().join("good.gz");
    std::fs::write(&good, gz(&raw)).unwrap();
    let a = read_idx(&good).unwrap();
    assert_eq!(a.dims, vec![2, 2, 2]);
    assert_eq!(a.data, (0..8).collect::<Vec<u8>>());

    let plain_truncated = dir.path().join("plain-truncated");
    std::fs::write(&plain_truncated, &raw[..raw.len() - 3]).unwrap();
    let err = read_idx(&plain_truncated).unwrap_err().to_string();
    assert!(err.contains("plain-truncated") && err.contains("truncated data"), "{err}");

    let gz_bytes = gz(&raw);
    let gz_truncated = dir.path().join("truncated.gz");
    std::fs::write(&gz_truncated, &gz_bytes[..gz_bytes.len() / 2]).unwrap();
    let err = read_idx(&gz_truncated).unwrap_err().to_string();
    assert!(err.contains("gzip"), "{err}");

    let mut bad_magic = raw.clone();
    bad_magic[1] = 0x42;
    let bad = dir.path().join("bad-magic");
    std::fs::write(&bad, gz(&bad_magic)).unwrap();
    assert!(read_idx(&bad).unwrap_err().to_string().contains("bad magic number"));

    let missing = read_idx(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(missing.contains("missing"), "{missing}");
}

#[test]
fn inconsistent_data_set_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let images = encode_idx(&[3, 28, 28], &vec![0u8; 3 * 28 * 28]);
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), encode_idx(&[2], &[1, 2])).unwrap();
    let err = fashion_mnist::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("2 labels for 3 images"), "{err}");

    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), encode_idx(&[3], &[1, 2, 10])).unwrap();
    let err = fashion_mnist::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("label 10 at index 2"), "{err}");

    let err = fashion_mnist::load(dir.path(), Split::Train).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("dataset-fashion-mnist"), "{err}");
}
