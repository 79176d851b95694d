//! Records libtorch's library folder as an rpath of every binary that links this crate, so that
//! `padim` and the tests run without LD_LIBRARY_PATH.

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
