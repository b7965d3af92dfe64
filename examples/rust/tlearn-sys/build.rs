//! Link flags for libtlearn from `pkg-config --libs tlearn`.
//!
//! Set PKG_CONFIG_PATH to find an installed library's tlearn.pc, or a meson build's
//! `meson-uninstalled` directory to use the build tree. `PKG_CONFIG` overrides the
//! pkg-config program. A missing library is a build error with the pkg-config message.
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(&pkg_config)
        .args(["--libs", "tlearn"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pkg_config}: {e}"));
    if !out.status.success() {
        panic!(
            "`{pkg_config} --libs tlearn` failed (set PKG_CONFIG_PATH to the directory of \
             tlearn.pc, or to BUILD/meson-uninstalled): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let flags = String::from_utf8(out.stdout).expect("pkg-config output is not UTF-8");
    for flag in flags.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            // Link-time only: at run time the loader needs the directory too
            // (LD_LIBRARY_PATH, or an installed library in a system path).
            println!("cargo:rustc-link-search=native={dir}");
            // Relink when the library is rebuilt, so a removed symbol fails here.
            println!("cargo:rerun-if-changed={dir}/libtlearn.so");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
        // Other flags (-pthread from Libs.private) only matter for static linking.
    }
}
