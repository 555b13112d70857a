//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf -O2 -g`, so
//! the object carries BTF), generates the Rust types of `bpf/switchyard.h`
//! with bindgen (`src/layout.rs` builds on them), and prints the C compiler's
//! layout table the layout tests compare with.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const INSTALL_HINT: &str = "backend-ebpf needs clang to compile its eBPF programs and libclang for bindgen: \
     apt-get install clang llvm libbpf-dev libclang-dev";

fn clang() -> String {
    env::var("SWITCHYARD_CLANG").unwrap_or_else(|_| "clang".to_string())
}

fn run(cmd: &mut Command, what: &str) {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{INSTALL_HINT} ({:?} not found)", cmd.get_program())
        }
        Err(e) => panic!("{what}: cannot run {:?}: {e}", cmd.get_program()),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("bpf/bpf_helpers.h") { format!("\n{INSTALL_HINT}") } else { String::new() };
        panic!("{what} failed ({}):\n{stderr}{hint}", out.status);
    }
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("bpf");
    for f in ["switchyard.c", "switchyard.h", "layout.c"] {
        println!("cargo:rerun-if-changed={}", bpf.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=SWITCHYARD_CLANG");

    // Debian puts asm/ under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default());
    let object = out.join("switchyard.bpf.o");
    run(
        Command::new(clang())
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &multiarch, "-c"])
            .arg(bpf.join("switchyard.c"))
            .arg("-o")
            .arg(&object),
        "compiling bpf/switchyard.c",
    );

    // The map keys and values as Rust types: one definition (the header).
    let bindings = bindgen::Builder::default()
        .header(bpf.join("switchyard.h").to_string_lossy())
        .clang_arg(&multiarch)
        .allowlist_type("swy_.*")
        .allowlist_var("SWY_.*")
        .derive_default(true)
        .derive_hash(true)
        .derive_eq(true)
        .derive_partialeq(true)
        .derive_ord(true)
        .derive_partialord(true)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on bpf/switchyard.h: {e}\n{INSTALL_HINT}"));
    bindings.write_to_file(out.join("switchyard_h.rs")).expect("writing switchyard_h.rs");

    let layout_bin = out.join("layout");
    run(
        Command::new(clang()).args(["-O0", &multiarch]).arg(bpf.join("layout.c")).arg("-o").arg(&layout_bin),
        "compiling bpf/layout.c",
    );
    let printed = Command::new(&layout_bin).output().unwrap_or_else(|e| panic!("running {layout_bin:?}: {e}"));
    assert!(printed.status.success(), "{layout_bin:?} failed");
    std::fs::write(out.join("layout_c.rs"), printed.stdout).expect("writing layout_c.rs");
}
