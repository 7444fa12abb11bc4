//! The binary and the tests must run without LD_LIBRARY_PATH and keep libtorch_cuda linked,
//! so that CUDA is used where there is a GPU.

use std::process::Command;

fn dynamic_section(path: &std::path::Path) -> String {
    let out = Command::new("readelf").arg("-d").arg(path).output().expect("readelf runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn torch_has_cuda_library() -> bool {
    let libtorch = crate::repo_root().join(".libtorch/lib/libtorch_cuda.so");
    libtorch.exists()
}

#[test]
fn binary_has_rpath_and_keeps_libtorch_cuda() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_pathguard"));
    let section = dynamic_section(&binary);
    assert!(section.contains("RUNPATH") || section.contains("RPATH"), "{section}");
    assert!(section.contains("torch/lib"), "{section}");
    if torch_has_cuda_library() {
        assert!(section.contains("libtorch_cuda.so"), "libtorch_cuda dropped by the linker:\n{section}");
    }
    // It runs with no LD_LIBRARY_PATH.
    let out = Command::new(&binary).arg("--version").env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn this_test_binary_keeps_libtorch_cuda_too() {
    if torch_has_cuda_library() {
        let exe = std::env::current_exe().unwrap();
        assert!(dynamic_section(&exe).contains("libtorch_cuda.so"));
    }
}

#[test]
fn cuda_is_seen_where_a_gpu_is() {
    let gpu_present = std::path::Path::new("/dev/nvidia0").exists();
    if gpu_present && torch_has_cuda_library() {
        assert!(tch::Cuda::is_available(), "a GPU is present but libtorch does not see it");
    } else {
        // Asking must not crash on a CPU-only machine, and auto falls back to the CPU.
        let _ = tch::Cuda::is_available();
        let device = pathguard::device::parse_device("auto").unwrap();
        assert_eq!(device, tch::Device::cuda_if_available());
        if !tch::Cuda::is_available() {
            let err = pathguard::device::parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("cuda:0 requested"), "{err}");
        }
    }
    assert!(pathguard::device::parse_device("tpu").is_err());
}
