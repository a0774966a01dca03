//! Compiles every `.proto` under the workspace's `proto/` folder in pure Rust (protox, so no
//! system `protoc`), generates prost messages and tonic clients and servers, writes the encoded
//! file descriptor set for gRPC reflection, and writes the module tree that nests each package.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::Compiler::new([&proto_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?
        .file_descriptor_set();
    std::fs::write(out_dir.join("omni_descriptor.bin"), fds.encode_to_vec())?;

    let packages: Vec<String> = fds
        .file
        .iter()
        .filter_map(|f| f.package.clone())
        .filter(|p| p.starts_with("omni."))
        .collect();

    // The written set keeps the contracts' comments (reflection shows them, and the runtime
    // reads the documented input limits from them); the generated code is made without them,
    // so proto comments never become Rust doc comments (or doctests).
    let mut bare = fds;
    for file in &mut bare.file {
        file.source_code_info = None;
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(bare)?;

    std::fs::write(out_dir.join("omni_modules.rs"), module_tree(&packages))?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// Nested `pub mod` blocks, one leaf per package, each including tonic's generated file.
fn module_tree(packages: &[String]) -> String {
    #[derive(Default)]
    struct Node {
        children: BTreeMap<String, Node>,
        package: Option<String>,
    }
    let mut root = Node::default();
    for package in packages {
        let mut node = &mut root;
        for part in package.split('.') {
            node = node.children.entry(part.to_owned()).or_default();
        }
        node.package = Some(package.clone());
    }
    fn render(node: &Node, out: &mut String) {
        if let Some(package) = &node.package {
            let _ = writeln!(
                out,
                "include!(concat!(env!(\"OUT_DIR\"), \"/{package}.rs\"));"
            );
        }
        for (name, child) in &node.children {
            let _ = writeln!(out, "pub mod {name} {{");
            render(child, out);
            let _ = writeln!(out, "}}");
        }
    }
    let mut out = String::new();
    render(&root, &mut out);
    out
}
