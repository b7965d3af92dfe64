//! Fine-tune a pretrained libtlearn checkpoint on a labelled set and save it.
//! Usage: finetune PRETRAINED.tlc IMAGES.f32 LABELS.i32 OUT.tlc
//! (raw little-endian float32 NCHW images and int32 labels, e.g. numpy's .tofile()).
use tlearn::{FreezePolicy, Model, OptimKind, Optimizer};

fn read<T>(path: &str, conv: fn([u8; 4]) -> T) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes.chunks_exact(4).map(|c| conv([c[0], c[1], c[2], c[3]])).collect()
}

fn main() -> tlearn::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 5, "usage: finetune PRETRAINED.tlc IMAGES.f32 LABELS.i32 OUT.tlc");
    let (x, y) = (read(&args[2], f32::from_le_bytes), read(&args[3], i32::from_le_bytes));
    let mut model = Model::load(&args[1])?;
    model.replace_head("fc1", 10)?; // a new 10-class head after fc1
    model.apply_freeze(Some(FreezePolicy::new()?.until("fc1")?))?; // the backbone stays
    let mut opt = Optimizer::new(OptimKind::Adam)?;
    opt.set_lr(1e-3)?;
    model.fit(&mut opt, &x, &y, 32, 5)?;
    model.save(&args[4], Some(&opt))
}
