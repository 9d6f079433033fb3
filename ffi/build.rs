// The shared library answers to the name C programs link with.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtandem.so");
}
