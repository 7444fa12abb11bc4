// Shared by the build scripts of every package that links libtorch (`include!`d).
//
// Why: binaries must run without LD_LIBRARY_PATH (so they get an rpath to torch/lib), and
// the linker's default `--as-needed` drops libtorch_cuda.so because no symbol of ours
// references it; without it `tch::Cuda::is_available()` is false even on a GPU machine.
// Link arguments only reach the targets of the package whose build script prints them,
// which is why each such package includes this file.

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run `make build` (it installs torch==2.13.0 and \
             points .libtorch at it); binaries will need LD_LIBRARY_PATH"
        );
        return;
    };
    let root = std::path::PathBuf::from(root);
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let lib = root.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
