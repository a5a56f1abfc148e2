// Shared build script body (included by build.rs and attacks/build.rs): embed the resolved libtorch
// lib dir as an rpath so binaries and test executables start without LD_LIBRARY_PATH. The symlink is
// resolved so the rpath points at the cache itself, not at the checkout.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // libtorch_cpu needs these at load time, not at link time; keep them on the rpath search.
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    }
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LIBRE_GIT_REV={rev}");
    // Re-run when HEAD moves so --version names the revision actually built.
    for f in [".git/HEAD", ".git/index", "../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
