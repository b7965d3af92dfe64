//! Runs examples/finetune.rs (the guide's Rust quick start as a program) on a small
//! pretrained model. `cargo test` builds the examples before running the tests.
use std::path::PathBuf;
use std::process::Command;

use tlearn::{Activation, Model};

#[test]
fn finetune_example_runs_and_saves() {
    // CARGO_TARGET_TMPDIR is <target>/tmp; examples are in <target>/<profile>/examples.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let exe = target.join(profile).join("examples").join("finetune");
    assert!(exe.exists(), "{} was not built", exe.display());

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("finetune-example");
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = Model::new(1, 8, 8).unwrap();
    p.set_seed(3).unwrap();
    p.add_conv2d("conv1", 4, 3, 1, 1, 1).unwrap()
        .add_activation("relu1", Activation::Relu).unwrap()
        .add_flatten("flat").unwrap()
        .add_dense("fc1", 16).unwrap()
        .add_dense("fc2", 4).unwrap();
    p.save(dir.join("pre.tlc"), None).unwrap();
    let x: Vec<u8> = (0..64 * 64).flat_map(|i| (((i * 31) % 17) as f32 / 17.0).to_le_bytes()).collect();
    let y: Vec<u8> = (0..64).flat_map(|i| (i % 10i32).to_le_bytes()).collect();
    std::fs::write(dir.join("x.f32"), x).unwrap();
    std::fs::write(dir.join("y.i32"), y).unwrap();

    let out = dir.join("out.tlc");
    let _ = std::fs::remove_file(&out);
    let status = Command::new(&exe)
        .args([dir.join("pre.tlc"), dir.join("x.f32"), dir.join("y.i32"), out.clone()])
        .status()
        .unwrap();
    assert!(status.success());
    let m = Model::load(&out).unwrap();
    assert_eq!(m.layer_names().unwrap(), ["conv1", "relu1", "flat", "fc1", "head"]);
    assert_eq!(m.output_shape().unwrap().c, 10);
    assert_eq!(m.get_tensor("conv1.weight").unwrap(), p.get_tensor("conv1.weight").unwrap());
}
