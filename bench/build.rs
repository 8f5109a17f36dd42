//! Compiles the forwarding benchmark's XDP programs (bpf/*.bpf.c: the load generator,
//! the in-kernel forwarder, the sink, the AF_XDP floor's steering) with clang;
//! fwd-bench embeds the objects and loads them with libbpf-rs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: [&str; 4] = ["gen", "fwd", "sink", "xsk"];

fn main() {
    println!("cargo:rerun-if-changed=bpf/csum.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // libbpf-sys (links = "bpf") exports its headers (bpf/bpf_helpers.h, ...) to its
    // direct dependents as DEP_BPF_INCLUDE.
    let bpf_include = env::var("DEP_BPF_INCLUDE")
        .expect("DEP_BPF_INCLUDE unset: libbpf-sys must be a direct dependency");
    // `-target bpf` does not search Debian's multiarch directory, where asm/types.h is.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok(other) => panic!("no multiarch include directory known for {other}"),
        Err(_) => panic!("CARGO_CFG_TARGET_ARCH unset"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I{bpf_include}"))
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang} (apt-get install clang): {e}"));
        assert!(status.success(), "{clang} failed to compile {src}");
    }
}
