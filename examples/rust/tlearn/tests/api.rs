//! The safe Rust API against the freshly built libtlearn (run by `meson test --suite rust`).
use std::ops::ControlFlow;
use std::path::PathBuf;

use tlearn::{status, Activation, BinaryOp, Error, ErrorKind, FitEnd, Fisher, FreezePolicy, LayerKind,
             Loss, Model, OptimKind, OptimParam, Optimizer, SaveOptions, Shape};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlearn-rs-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mlp(seed: u64) -> Model {
    let mut m = Model::new(8, 1, 1).unwrap();
    m.set_seed(seed).unwrap();
    m.add_dense("fc1", 16).unwrap()
        .add_activation("relu1", Activation::Relu).unwrap()
        .add_dense("fc2", 3).unwrap();
    m
}

/// Separable clusters: class k is centred on +3 in coordinate k (deterministic noise).
fn blobs(n: usize) -> (Vec<f32>, Vec<i32>) {
    let y: Vec<i32> = (0..n).map(|i| (i % 3) as i32).collect();
    let mut x = vec![0.0f32; n * 8];
    let mut s: u32 = 12345;
    for (i, v) in x.iter_mut().enumerate() {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        *v = ((s >> 8) as f32 / 16777216.0 - 0.5) * 0.8;
        if i % 8 == y[i / 8] as usize {
            *v += 3.0;
        }
    }
    (x, y)
}

#[test]
fn errors_have_kinds_codes_and_messages() {
    let mut m = mlp(1);
    let e = m.add_dense("fc1", 4).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::InvalidArgument, status::EINVAL));
    assert!(matches!(m.layer_index("nope").unwrap_err().kind(), ErrorKind::NotFound));
    assert_eq!(m.set_tensor("fc1.bias", &[1.0]).unwrap_err().kind(), ErrorKind::Shape);
    assert_eq!(Model::load("/nonexistent/m.tlc").err().unwrap().kind(), ErrorKind::Io);
    let e = Model::from_bytes(b"not a checkpoint").err().unwrap();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Format, status::EFORMAT));
    assert!(e.message().starts_with("tlearn_model_load_buffer: "), "{}", e.message());
    // every status maps to its kind, and unknown codes keep theirs
    let table = [(status::EINVAL, ErrorKind::InvalidArgument), (status::ENOMEM, ErrorKind::NoMemory),
                 (status::ESHAPE, ErrorKind::Shape), (status::ENOTFOUND, ErrorKind::NotFound),
                 (status::EIO, ErrorKind::Io), (status::EFORMAT, ErrorKind::Format),
                 (status::EUNSUPPORTED, ErrorKind::Unsupported),
                 (status::ENONFINITE, ErrorKind::NonFinite), (status::ESTATE, ErrorKind::State),
                 (status::EVERSION, ErrorKind::Version), (status::ECANCELED, ErrorKind::Cancelled)];
    assert_eq!(table.len(), 11); // TLEARN_EINVAL (-1) .. TLEARN_ECANCELED (-11)
    for (code, kind) in table {
        let e = Error::new(code, "m");
        assert_eq!((e.kind(), e.code(), e.message()), (kind, code, "m"));
    }
    let e = Error::new(-99, "from the future");
    assert_eq!((e.kind(), e.code()), (ErrorKind::Unknown, -99));
    assert!(e.to_string().contains("(-99): from the future"), "{e}");
}

#[test]
fn version_and_errors() {
    assert!(tlearn::version().starts_with("1."));
    assert_eq!(tlearn::version_hex() >> 24, 1);
    let mut m = mlp(1);
    let e = m.add_dense("fc1", 4).unwrap_err();
    assert_eq!(e.code(), status::EINVAL);
    assert!(e.message().contains("fc1"), "{e}");
    assert_eq!(m.layer_index("nope").unwrap_err().code(), status::ENOTFOUND);
    // Wrong lengths are refused before C sees them.
    assert_eq!(m.predict(&[0.0; 7]).unwrap_err().code(), status::EINVAL);
    let (x, y) = blobs(6);
    assert_eq!(m.evaluate(&x, &y[..5]).unwrap_err().code(), status::EINVAL);
    assert!(m.add_dense("bad\0name", 3).unwrap_err().message().contains("NUL"));
}

#[test]
fn build_and_inspect() {
    let mut m = Model::new(1, 8, 8).unwrap();
    m.add_conv2d("conv1", 4, 3, 1, 1, 1).unwrap()
        .add_batchnorm("bn1", 1e-5, 0.1).unwrap()
        .add_activation("relu1", Activation::Relu).unwrap()
        .add_maxpool2d("pool1", 2, 0, 0).unwrap()
        .add_flatten("flat").unwrap()
        .add_dense("fc", 3).unwrap();
    assert_eq!(m.layer_names().unwrap(), ["conv1", "bn1", "relu1", "pool1", "flat", "fc"]);
    assert_eq!(m.layer_kind(0).unwrap(), LayerKind::Conv2d);
    assert_eq!(m.layer_kind(1).unwrap(), LayerKind::BatchNorm);
    assert_eq!(m.layer_shape(3).unwrap(), Shape { c: 4, h: 4, w: 4 });
    assert_eq!(m.input_shape().unwrap(), Shape { c: 1, h: 8, w: 8 });
    assert_eq!(m.param_count().unwrap(), (40 + 8 + 64 * 3 + 3, 40 + 8 + 64 * 3 + 3));
    let tensors = m.tensors().unwrap();
    assert!(tensors.contains(&("conv1.weight".to_string(), vec![4, 1, 3, 3])));
    assert!(tensors.iter().any(|(n, _)| n == "bn1.running_var"));
    assert_eq!(m.predict(&vec![0.5; 2 * 64]).unwrap().len(), 6);
}

#[test]
fn data_movement_layers() {
    let mut m = Model::new(2, 2, 3).unwrap();
    m.add_slice("s", 0, 1, i32::MAX, 1).unwrap()
        .set_next_input(None).unwrap()
        .add_concat("cat", &["s", "input", "s"], 0).unwrap()   // channels 1, 0, 1, 1
        .add_transpose("t", &[1, 2, 0]).unwrap()               // (2, 3, 4): channels last
        .add_reshape("r", &[-1]).unwrap();
    assert_eq!(m.layer_kind(1).unwrap(), LayerKind::Concat);
    assert_eq!(m.layer_kind(2).unwrap(), LayerKind::Transpose);
    assert_eq!(m.layer_shape_nd(3).unwrap(), vec![24]);
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let out = m.predict(&x).unwrap();
    let src = [1, 0, 1, 1];
    for p in 0..6 {
        for c in 0..4 {
            assert_eq!(out[p * 4 + c], x[src[c] * 6 + p]);
        }
    }
    assert!(m.add_concat("bad", &["cat"], 0).is_err()); // one input
    assert!(m.add_transpose("bad", &[0, 0]).is_err());
    assert!(m.add_reshape("bad", &[5, -1]).is_err());
    assert!(m.add_slice("bad", 0, 3, 1, 1).is_err());
}

#[test]
fn elementwise_layers() {
    // squeeze-excitation: a (4, 1, 1) gate times the (4, 3, 3) map, then a layer scale
    // and a softmax over the channels
    let mut m = Model::new(2, 3, 3).unwrap();
    m.add_conv2d("c", 4, 3, 1, 1, 1).unwrap()
        .add_activation("hsw", Activation::HardSwish).unwrap()
        .add_global_avgpool("gap").unwrap()
        .add_activation("gate", Activation::HardSigmoid(0.2, 0.5)).unwrap()
        .add_binary("se", BinaryOp::Mul, Some("hsw"), "gate").unwrap()
        .add_scale("ls", &[4, 1, 1], true).unwrap()
        .add_activation("clip", Activation::Clip(-1.0, 1.0)).unwrap()
        .add_activation("silu", Activation::Silu).unwrap()
        .add_activation("gt", Activation::GeluTanh).unwrap()
        .add_softmax("sm", 0).unwrap();
    assert_eq!(m.layer_kind(4).unwrap(), LayerKind::Binary);
    assert_eq!(m.layer_kind(5).unwrap(), LayerKind::Scale);
    assert_eq!(m.layer_kind(9).unwrap(), LayerKind::Softmax);
    assert_eq!(m.layer_shape_nd(4).unwrap(), [4, 3, 3]);
    assert_eq!(m.get_tensor("ls.weight").unwrap(), [1.0; 4]);
    let y = m.predict(&vec![0.3; 2 * 18]).unwrap();
    for p in 0..9 {
        let s: f32 = (0..4).map(|c| y[c * 9 + p]).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
    let e = m.add_binary("bad", BinaryOp::Add, None, "nope").unwrap_err();
    assert_eq!(e.code(), status::ENOTFOUND);
    let e = m.add_scale("bad", &[2], false).unwrap_err(); // the last axis is 3
    assert_eq!(e.code(), status::ESHAPE);
    let e = m.add_activation("bad", Activation::Clip(1.0, -1.0)).unwrap_err();
    assert_eq!(e.code(), status::EINVAL);
}

#[test]
fn predict_is_the_dense_formula() {
    let mut m = Model::new(2, 1, 1).unwrap();
    m.add_dense("fc", 2).unwrap();
    m.set_tensor("fc.weight", &[1.0, 2.0, 3.0, 4.0]).unwrap();
    m.set_tensor("fc.bias", &[0.5, -0.5]).unwrap();
    assert_eq!(m.get_tensor("fc.weight").unwrap(), [1.0, 2.0, 3.0, 4.0]);
    // y = x W^T + b for x = (1, 1) and (2, 0)
    assert_eq!(m.predict(&[1.0, 1.0, 2.0, 0.0]).unwrap(), [3.5, 6.5, 2.5, 5.5]);
    assert_eq!(m.set_tensor("fc.bias", &[1.0]).unwrap_err().code(), status::ESHAPE);
}

#[test]
fn fit_learns_with_progress_closure() {
    let (x, y) = blobs(96);
    let mut m = mlp(2);
    let mut opt = Optimizer::new(OptimKind::Adam).unwrap();
    opt.set_lr(0.01).unwrap();
    let (loss0, _) = m.evaluate(&x, &y).unwrap();
    let mut seen = Vec::new();
    let end = m.fit_with_progress(&mut opt, &x, &y, 32, 4, true, |p| {
        seen.push((p.epoch, p.step, p.steps_per_epoch, p.epochs));
        ControlFlow::Continue(())
    }).unwrap();
    assert_eq!(end, FitEnd { epochs_completed: 4, steps: 12, stopped: false });
    assert_eq!(seen.len(), 12);
    assert_eq!(seen[0], (0, 0, 3, 4));
    assert_eq!(seen[11], (3, 2, 3, 4));
    let (loss1, acc) = m.evaluate(&x, &y).unwrap();
    assert!(loss1 < loss0 && acc > 0.9, "loss {loss0} -> {loss1}, accuracy {acc}");
}

#[test]
fn fit_can_be_cancelled_and_panics_propagate() {
    let (x, y) = blobs(64);
    let mut m = mlp(3);
    let mut opt = Optimizer::new(OptimKind::Sgd).unwrap();
    // Stopping on purpose is not an error: Ok, with what ran. 64 examples in batches of 16
    // are 4 steps an epoch; stopping after the 6th step leaves one whole epoch.
    let mut calls = 0;
    let end = m.fit_with_progress(&mut opt, &x, &y, 16, 3, true, |_| {
        calls += 1;
        if calls == 6 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }).unwrap();
    assert_eq!(end, FitEnd { epochs_completed: 1, steps: 6, stopped: true });
    assert_eq!(calls, 6);
    // at the end of an epoch, that epoch counts
    let end = m.fit_with_progress(&mut opt, &x, &y, 16, 3, true, |p| {
        if p.step + 1 == p.steps_per_epoch { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }).unwrap();
    assert_eq!(end, FitEnd { epochs_completed: 1, steps: 4, stopped: true });
    // a real failure is still an Err, of its kind
    let e = m.fit_with_progress(&mut opt, &x, &[7; 64], 16, 1, true, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = m.fit_with_progress(&mut opt, &x, &y, 16, 1, true, |_| panic!("from closure"));
    }));
    let payload = r.unwrap_err();
    assert_eq!(*payload.downcast_ref::<&str>().unwrap(), "from closure");
}

#[test]
fn optimizer_parameters() {
    let mut o = Optimizer::new(OptimKind::Sgd).unwrap();
    o.set_lr(0.05).unwrap().set(OptimParam::Momentum, 0.9).unwrap();
    assert_eq!(o.kind().unwrap(), OptimKind::Sgd);
    assert!((o.get(OptimParam::Lr).unwrap() - 0.05).abs() < 1e-12);
    assert!((o.get(OptimParam::Momentum).unwrap() - 0.9).abs() < 1e-12);
    assert_eq!(o.set(OptimParam::Beta1, 0.5).unwrap_err().code(), status::EINVAL);
    let w = Optimizer::new(OptimKind::AdamW).unwrap();
    assert!((w.get(OptimParam::WeightDecay).unwrap() - 0.01).abs() < 1e-12);
}

#[test]
fn sgd_step_is_w_minus_lr_grad_and_input_gradient() {
    let (x, y) = blobs(8);
    let mut m = mlp(4);
    let mut o = Optimizer::new(OptimKind::Sgd).unwrap();
    o.set_lr(0.5).unwrap();
    let w = m.get_tensor("fc2.weight").unwrap();
    let (_, dx) = m.compute_gradients(&x, &y).unwrap();
    assert_eq!(dx.len(), x.len());
    assert!(dx.iter().any(|&v| v != 0.0));
    let g = m.get_grad("fc2.weight").unwrap();
    m.train_step(&mut o, &x, &y).unwrap();
    for ((after, before), grad) in m.get_tensor("fc2.weight").unwrap().iter().zip(&w).zip(&g) {
        assert!((after - (before - 0.5 * grad)).abs() < 1e-5);
    }
}

#[test]
fn mse_training_converges() {
    let x: Vec<f32> = (0..64 * 2).map(|i| ((i * 37) % 19) as f32 / 19.0 - 0.5).collect();
    let t: Vec<f32> = x.chunks(2).map(|p| 2.0 * p[0] - p[1]).collect();
    let mut m = Model::new(2, 1, 1).unwrap();
    m.add_dense("lin", 1).unwrap().set_loss(Loss::Mse).unwrap();
    let mut o = Optimizer::new(OptimKind::Sgd).unwrap();
    o.set_lr(0.3).unwrap();
    let first = m.train_step_mse(&mut o, &x, &t).unwrap();
    let mut last = first;
    for _ in 0..300 {
        last = m.train_step_mse(&mut o, &x, &t).unwrap();
    }
    assert!(last < first * 1e-3, "{first} -> {last}");
}

#[test]
fn freeze_features_and_cached_head() {
    let (x, y) = blobs(96);
    let mut m = mlp(5);
    let mut opt = Optimizer::new(OptimKind::Adam).unwrap();
    opt.set_lr(0.01).unwrap();
    let feats = m.features("relu1", &x).unwrap();
    assert_eq!(feats.len(), 96 * 16);
    assert_eq!(m.predict_from("relu1", &feats).unwrap().len(), 96 * 3);
    assert_eq!(m.train_step_from(&mut opt, "relu1", &feats, &y).unwrap_err().code(),
               status::ESTATE);
    m.apply_freeze(Some(FreezePolicy::new().unwrap().until("relu1").unwrap())).unwrap();
    assert!(m.layer_frozen("fc1").unwrap() && !m.layer_frozen("fc2").unwrap());
    assert_eq!(m.param_count().unwrap().1, 3 * 16 + 3);
    let w1 = m.get_tensor("fc1.weight").unwrap();
    let first = m.train_step_from(&mut opt, "relu1", &feats, &y).unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = m.train_step_from(&mut opt, "relu1", &feats, &y).unwrap();
    }
    assert!(last < first);
    m.fit(&mut opt, &x, &y, 32, 1).unwrap();
    assert_eq!(m.get_tensor("fc1.weight").unwrap(), w1);
    let mut p = FreezePolicy::new().unwrap();
    p.ulmfit(2.0).unwrap();
    m.apply_freeze(Some(&p)).unwrap();
    assert!((m.layer_lr_scale("fc1").unwrap() - 0.5).abs() < 1e-6);
    let mut bad = FreezePolicy::new().unwrap();
    bad.matching("conv*", true).unwrap();
    assert_eq!(m.apply_freeze(Some(&bad)).unwrap_err().code(), status::ENOTFOUND);
    m.apply_freeze(None).unwrap();
    assert!(!m.layer_frozen("fc1").unwrap());
    m.replace_head("relu1", 7).unwrap();
    assert_eq!(m.layer_names().unwrap(), ["fc1", "relu1", "head"]);
    m.truncate(Some("fc1")).unwrap();
    assert_eq!(m.layer_count().unwrap(), 1);
}

#[test]
fn ewc_and_l2sp_penalties() {
    let (x, y) = blobs(48);
    let mut m = mlp(6);
    m.ewc_consolidate(&x, &y, Fisher::Empirical, 10.0).unwrap();
    assert!(m.penalty().unwrap().abs() < 1e-7);
    let f = m.ewc_fisher(0, "fc2.weight").unwrap();
    assert!(f.iter().all(|&v| v >= 0.0) && f.iter().sum::<f32>() > 0.0);
    let w: Vec<f32> = m.get_tensor("fc2.weight").unwrap().iter().map(|v| v + 0.1).collect();
    m.set_tensor("fc2.weight", &w).unwrap();
    let want = 5.0 * 0.01 * f.iter().sum::<f32>();
    assert!((m.penalty().unwrap() - want).abs() <= 1e-3 * want);
    m.ewc_clear().unwrap();
    assert_eq!(m.penalty().unwrap(), 0.0);
    m.l2sp_enable(2.0, 0.0).unwrap();
    let b: Vec<f32> = m.get_tensor("fc2.bias").unwrap().iter().map(|v| v + 0.5).collect();
    m.set_tensor("fc2.bias", &b).unwrap();
    assert!((m.penalty().unwrap() - 0.75).abs() < 1e-4);
}

#[test]
fn save_load_metadata_and_weights() {
    let dir = tmpdir("save");
    let path = dir.join("m.tlc");
    let (x, y) = blobs(48);
    let mut m = mlp(7);
    let mut o = Optimizer::new(OptimKind::Adam).unwrap();
    o.set_lr(0.003).unwrap();
    m.fit(&mut o, &x, &y, 16, 1).unwrap();
    m.set_metadata("dataset", "blobs").unwrap();
    m.save_with(&path, Some(&o), SaveOptions { inference_only: false, compress: 6 }).unwrap();
    let want = m.predict(&x).unwrap();
    assert!(tlearn::read_metadata(&path).unwrap()
        .contains(&("dataset".to_string(), "blobs".to_string())));
    let (mut m2, o2) = Model::load_with_optimizer(&path).unwrap();
    assert_eq!(m2.predict(&x).unwrap(), want);
    assert_eq!(m2.get_metadata("dataset").unwrap(), "blobs");
    let o2 = o2.expect("the checkpoint holds the optimizer");
    assert_eq!(o2.kind().unwrap(), OptimKind::Adam);
    assert!((o2.get(OptimParam::Lr).unwrap() - 0.003).abs() < 1e-9);
    let mut m3 = mlp(8);
    assert_eq!(m3.load_weights(&path, true).unwrap(), (4, 0));
    assert_eq!(m3.predict(&x).unwrap(), want);
    assert_eq!(Model::load(dir.join("missing.tlc")).err().unwrap().code(), status::EIO);
    std::fs::write(dir.join("bad.tlc"), b"not a checkpoint, not at all").unwrap();
    assert_eq!(Model::load(dir.join("bad.tlc")).err().unwrap().code(), status::EFORMAT);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn safetensors_roundtrip_with_name_map() {
    let dir = tmpdir("st");
    let (x, _) = blobs(4);
    let mut src = mlp(9);
    src.export_safetensors(dir.join("w.safetensors")).unwrap();
    let want = src.predict(&x).unwrap();
    let mut m = mlp(10);
    assert_eq!(m.import_safetensors(dir.join("w.safetensors"), true).unwrap(), 4);
    assert_eq!(m.predict(&x).unwrap(), want);
    // Only fc2.* by mapping, the rest skipped: partial mode.
    let mut m2 = mlp(11);
    let n = m2.import_safetensors_mapped(dir.join("w.safetensors"), false, |name| {
        name.starts_with("fc2.").then(|| name.to_string())
    }).unwrap();
    assert_eq!(n, 2);
    assert_eq!(m2.get_tensor("fc2.bias").unwrap(), src.get_tensor("fc2.bias").unwrap());
    assert_ne!(m2.get_tensor("fc1.bias").unwrap(), src.get_tensor("fc1.bias").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bytes_are_the_files_and_load_back() {
    let dir = tmpdir("bytes");
    let (x, y) = blobs(48);
    let mut m = mlp(13);
    let mut o = Optimizer::new(OptimKind::Adam).unwrap();
    o.set_lr(0.003).unwrap();
    m.fit(&mut o, &x, &y, 16, 1).unwrap();
    let want = m.predict(&x).unwrap();
    for options in [SaveOptions::default(), SaveOptions { inference_only: true, compress: 6 }] {
        let path = dir.join("m.tlc");
        m.save_with(&path, Some(&o), options).unwrap();
        assert_eq!(m.to_bytes_with(Some(&o), options).unwrap(), std::fs::read(&path).unwrap());
    }
    let data = m.to_bytes(Some(&o)).unwrap();
    let (mut m2, o2) = Model::from_bytes_with_optimizer(&data).unwrap();
    assert_eq!(m2.predict(&x).unwrap(), want);
    let o2 = o2.expect("the bytes hold the optimizer");
    assert!((o2.get(OptimParam::Lr).unwrap() - 0.003).abs() < 1e-9);
    assert_eq!(m2.to_bytes(Some(&o2)).unwrap(), data);
    assert_eq!(Model::from_bytes(&data).unwrap().predict(&x).unwrap(), want);
    let mut m3 = mlp(14);
    assert_eq!(m3.load_weights_bytes(&data, true).unwrap(), (4, 0));
    assert_eq!(m3.predict(&x).unwrap(), want);

    m.export_safetensors(dir.join("w.safetensors")).unwrap();
    let st = m.export_safetensors_bytes().unwrap();
    assert_eq!(st, std::fs::read(dir.join("w.safetensors")).unwrap());
    let mut m4 = mlp(15);
    assert_eq!(m4.import_safetensors_bytes(&st, true).unwrap(), 4);
    assert_eq!(m4.predict(&x).unwrap(), want);
    let mut m5 = mlp(16);
    let n = m5.import_safetensors_bytes_mapped(&st, false, |name| {
        name.starts_with("fc2.").then(|| name.to_string())
    }).unwrap();
    assert_eq!(n, 2);

    // Damaged bytes: refused with the file's code, nothing handed back or changed.
    let before = m5.get_tensor("fc1.weight").unwrap();
    for cut in [0, 10, 64, data.len() / 2, data.len() - 1] {
        std::fs::write(dir.join("bad.tlc"), &data[..cut]).unwrap();
        let from_file = Model::load(dir.join("bad.tlc")).err().unwrap();
        let from_bytes = Model::from_bytes(&data[..cut]).err().unwrap();
        assert_eq!(from_bytes.code(), status::EFORMAT);
        assert_eq!(from_bytes.code(), from_file.code());
        assert_eq!(from_bytes.message().split_once(": ").unwrap().1,
                   from_file.message().split_once(": ").unwrap().1);
        assert_eq!(m5.load_weights_bytes(&data[..cut], false).unwrap_err().code(),
                   status::EFORMAT);
        assert_eq!(m5.import_safetensors_bytes(&st[..cut.min(st.len() - 1)], false)
                       .unwrap_err().code(),
                   status::EFORMAT);
    }
    assert_eq!(m5.get_tensor("fc1.weight").unwrap(), before);
    assert_eq!(m.to_bytes_with(None, SaveOptions { inference_only: false, compress: 10 })
                   .unwrap_err().code(), status::EINVAL);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn onnx_garbage_is_an_error_not_a_crash() {
    let e = Model::import_onnx_bytes(b"\x00\x01garbage").err().unwrap();
    assert!(e.code() == status::EFORMAT || e.code() == status::EUNSUPPORTED, "{e}");
    assert_eq!(Model::import_onnx("/nonexistent/x.onnx").err().unwrap().code(), status::EIO);
}

#[test]
fn handles_move_between_threads() {
    let m = mlp(12);
    let n = std::thread::spawn(move || m.layer_count().unwrap()).join().unwrap();
    assert_eq!(n, 3);
}

#[test]
fn onnx_import_then_finetune_the_head() {
    // A small ResNet-style block exported by torch.onnx (tests/onnx/make_corpus.py).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../tests/onnx/corpus/res-bn-13.onnx");
    let mut m = Model::import_onnx(path).unwrap();
    assert_eq!(m.input_shape().unwrap(), Shape { c: 2, h: 4, w: 4 });
    let names = m.layer_names().unwrap();
    assert_eq!(names.last().unwrap(), "fc");
    let bytes = std::fs::read(path).unwrap();
    let mut from_bytes = Model::import_onnx_bytes(&bytes).unwrap();
    let x: Vec<f32> = (0..6 * 32).map(|i| ((i * 13) % 7) as f32 / 7.0 - 0.5).collect();
    assert_eq!(m.predict(&x).unwrap(), from_bytes.predict(&x).unwrap());
    // New 4-class head after the pooling layer, everything else frozen.
    let before = names[names.len() - 2].clone();
    m.replace_head(&before, 4).unwrap();
    m.apply_freeze(Some(FreezePolicy::new().unwrap().until(&before).unwrap())).unwrap();
    let y: Vec<i32> = (0..6).map(|i| i % 4).collect();
    let mut o = Optimizer::new(OptimKind::Adam).unwrap();
    o.set_lr(0.05).unwrap();
    let w_conv = m.get_tensor("conv.weight").unwrap();
    let first = m.train_step(&mut o, &x, &y).unwrap();
    let mut last = first;
    for _ in 0..50 {
        last = m.train_step(&mut o, &x, &y).unwrap();
    }
    assert!(last < first, "{first} -> {last}");
    assert_eq!(m.get_tensor("conv.weight").unwrap(), w_conv);
    assert_eq!(m.predict(&x).unwrap().len(), 6 * 4);
}

#[test]
fn norm_pool_pad_matmul_layers() {
    use tlearn::PadMode;
    let mut m = Model::new(3, 9, 9).unwrap();
    m.add_pad("pad", (1, 0, 0, 1), PadMode::Reflect).unwrap()            // 3x10x10
        .add_maxpool2d_ex("max", (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), true).unwrap() // 3x5x5
        .add_avgpool2d_ex("avg", (2, 2), (1, 1), (1, 1, 0, 0), false, true).unwrap()  // 3x5x5
        .add_layernorm_channels("ln2d", 1e-6, true).unwrap()
        .add_drop_path("dp", 0.1).unwrap()
        .add_adaptive_avgpool("ap", 2, 3).unwrap()
        .add_pad("pad2", (0, 0, 1, 0), PadMode::Constant(0.5)).unwrap()    // 3x3x3
        .add_layernorm("ln", 2, 1e-5, false).unwrap();
    let kinds: Vec<_> = (0..m.layer_count().unwrap()).map(|i| m.layer_kind(i).unwrap()).collect();
    assert_eq!(kinds, [LayerKind::Pad, LayerKind::MaxPool2d, LayerKind::AvgPool2d,
                       LayerKind::LayerNorm, LayerKind::DropPath, LayerKind::AdaptiveAvgPool,
                       LayerKind::Pad, LayerKind::LayerNorm]);
    assert_eq!(m.layer_shape(1).unwrap(), Shape { c: 3, h: 5, w: 5 });
    assert_eq!(m.output_shape().unwrap(), Shape { c: 3, h: 3, w: 3 });
    let out = m.predict(&vec![0.25f32; 2 * 243]).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    assert_eq!(m.add_layernorm("bad", 0, 1e-5, true).err().unwrap().code(), status::EINVAL);

    let mut s = Model::with_input("x", &[5, 6], false).unwrap();
    s.add_linear("q", 4, true).unwrap().set_next_input(Some("x")).unwrap()
        .add_linear("k", 4, false).unwrap()
        .add_matmul("scores", "q", "k", true).unwrap();
    assert_eq!(s.layer_shape_nd(2).unwrap(), vec![5, 5]);
    assert_eq!(s.layer_kind(2).unwrap(), LayerKind::MatMul);
    assert_eq!(s.add_matmul("bad", "q", "nothere", false).err().unwrap().code(),
               status::ENOTFOUND);
}

#[test]
fn prototype_head_similarity_and_transferability() {
    let (x, y) = blobs(30);
    let mut m = mlp(4);
    m.prototype_head("relu1", "proto", &x, &y, 3, 10.0, false, false).unwrap();
    assert_eq!(m.layer_kind(2).unwrap(), LayerKind::Prototype);
    m.prototype_add_classes("proto", 1).unwrap();
    m.prototype_update("proto", &x[..8], &[3], false).unwrap();
    m.prototype_remove_class("proto", 3).unwrap();
    let e = m.embed("relu1", &x).unwrap();
    let norm: f32 = e[..16].iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-4);
    let h = m.transferability("relu1", &x, &y, 3, tlearn::TransferMetric::HScore).unwrap();
    assert!(h > 0.0);
    m.prototype_to_dense("proto").unwrap();
    assert_eq!(m.layer_kind(2).unwrap(), LayerKind::Dense);
    let (idx, sc) = tlearn::similarity_topk(&x[..16], &x, 8, 1, 1).unwrap();
    assert_eq!(idx, vec![0, 1]);
    assert!((sc[0] - 1.0).abs() < 1e-5);
    let s = tlearn::similarity_scores(&x[..8], &x, 8, 1).unwrap();
    assert_eq!(s.len(), 30);
    let l = tlearn::transferability(&x, 8, &y, 3, tlearn::TransferMetric::LogMe).unwrap();
    assert!(l.is_finite());
}

#[test]
fn contrastive_pairs() {
    use tlearn::Input;
    let mut m = Model::with_input("x", &[6], false).unwrap();
    m.add_linear("proj", 4, true).unwrap();
    let x: Vec<f32> = (0..48).map(|i| (i as f32 * 0.71).sin()).collect(); // 4 pairs
    let mut o = Optimizer::new(OptimKind::Sgd).unwrap();
    o.set_lr(0.5).unwrap();
    assert_eq!(m.train_step_pairs(&mut o, &[Input::F32(&x)], 8).err().unwrap().code(),
               status::ESTATE); // the loss is still cross-entropy
    m.set_loss(Loss::Contrastive).unwrap().set_contrastive_temperature(0.1).unwrap();
    let (first, dx) = m.compute_gradients_pairs(&[Input::F32(&x)], 8, true).unwrap();
    assert_eq!(dx.unwrap().len(), 48);
    let mut last = first;
    for _ in 0..30 {
        last = m.train_step_pairs(&mut o, &[Input::F32(&x)], 8).unwrap();
    }
    assert!(last < first);
    assert_eq!(m.train_step_pairs(&mut o, &[Input::F32(&x[..42])], 7).err().unwrap().code(),
               status::EINVAL); // odd
    assert_eq!(m.set_contrastive_temperature(-1.0).err().unwrap().code(), status::EINVAL);
}

#[test]
fn domain_adaptation() {
    use tlearn::{Discrepancy, Input, Target};
    let mut m = Model::with_input("x", &[4], false).unwrap();
    m.add_linear("feat", 6, true).unwrap().add_batchnorm("bn", 1e-5, 0.1).unwrap()
        .add_activation("r", Activation::Relu).unwrap().add_dense("cls", 3).unwrap()
        .set_next_input(Some("r")).unwrap()
        .add_grad_reverse("grl", 0.0).unwrap().add_dense("dom", 2).unwrap();
    m.set_outputs(&["cls", "dom"]).unwrap();
    assert_eq!(m.layer_kind(4).unwrap(), LayerKind::GradReverse);
    m.set_grad_reverse_lambda(None, tlearn::dann_lambda(0.5)).unwrap();
    m.set_output_loss(0, Some(Loss::SoftmaxCrossEntropy), 1.0).unwrap()
        .set_output_loss(1, Some(Loss::SoftmaxCrossEntropy), 0.5).unwrap()
        .set_discrepancy("r", Discrepancy::Mmd, 0.2).unwrap()
        .set_mmd_bandwidths(&[]).unwrap();
    let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let y = [0, 1, 2, 0, -1, -1, -1, -1];
    let d = [0, 0, 0, 0, 1, 1, 1, 1];
    let mut o = Optimizer::new(OptimKind::Sgd).unwrap();
    let l = m.train_step_multi(&mut o, &[Input::F32(&x)], 8,
                               &[Target::Labels(&y), Target::Labels(&d)], None).unwrap();
    assert!(l.is_finite() && l > 0.0);
    assert_eq!(m.train_step_multi(&mut o, &[Input::F32(&x)], 8, &[Target::None, Target::None], None)
               .err().unwrap().code(), status::EINVAL); // no labels mark target rows
    m.adapt_bn(&[Input::F32(&x)], 8, 4).unwrap();
    let w = m.get_tensor("bn.weight").unwrap();
    let h = m.tent_step(&mut o, &[Input::F32(&x)], 8).unwrap();
    assert!(h.is_finite());
    m.tent_reset().unwrap();
    assert_eq!(m.get_tensor("bn.weight").unwrap(), w);
    let t = [0u8, 0, 1, 1];
    let (v, g) = tlearn::discrepancy(Discrepancy::Coral, &x[..8], 2, &t, &[]).unwrap();
    assert!(v >= 0.0 && g.len() == 8);
}

#[test]
fn fit_run_with_schedule_validation_and_early_stopping() {
    use std::ops::ControlFlow;
    use tlearn::{sys, FitOptions, Schedule, ScheduleKind, Targets};
    let (n, d) = (64usize, 4usize);
    let mut x = vec![0f32; n * d];
    let mut y = vec![0i32; n];
    for i in 0..n {
        y[i] = (i % 2) as i32;
        for j in 0..d {
            x[i * d + j] = ((i * 7 + j * 3) % 5) as f32 / 5.0 - 0.4 + if j == i % 2 { 1.0 } else { 0.0 };
        }
    }
    let mut m = Model::new(d as i32, 1, 1).unwrap();
    m.add_dense("fc", 2).unwrap();
    let mut opt = Optimizer::new(OptimKind::Sgd).unwrap();
    opt.set_lr(0.5).unwrap();
    let mut s = Schedule::new(ScheduleKind::Step).unwrap();
    assert!(s.set(sys::TLEARN_SCHED_STEP_SIZE, -2.0).is_err());
    s.set(sys::TLEARN_SCHED_STEP_SIZE, 3.0).unwrap().set(sys::TLEARN_SCHED_GAMMA, 0.5).unwrap();
    opt.set_schedule(Some(&s)).unwrap();
    let mut f = FitOptions::new().unwrap();
    f.set(sys::TLEARN_FIT_BATCH, 16.0).unwrap().set(sys::TLEARN_FIT_EPOCHS, 3.0).unwrap();
    f.set(sys::TLEARN_FIT_MONITOR, sys::TLEARN_METRIC_VAL_ACCURACY as f64).unwrap();
    // stopped on purpose after the first epoch: Ok, with that epoch's record
    let mut once = Model::new(d as i32, 1, 1).unwrap();
    once.add_dense("fc", 2).unwrap();
    let mut once_opt = Optimizer::new(OptimKind::Sgd).unwrap();
    let w0 = once.get_tensor("fc.weight").unwrap();
    let recs = once.fit_run(&mut once_opt, &mut f, &x, Targets::Labels(&y),
                            Some((&x, Targets::Labels(&y))), |_| ControlFlow::Break(())).unwrap();
    assert_eq!(recs.len(), 1);
    assert_ne!(once.get_tensor("fc.weight").unwrap(), w0); // that epoch trained
    let mut seen = 0;
    let recs = m.fit_run(&mut opt, &mut f, &x, Targets::Labels(&y), Some((&x, Targets::Labels(&y))),
                         |_| { seen += 1; ControlFlow::Continue(()) }).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(seen, 3);
    assert!(recs[2].get(sys::TLEARN_METRIC_VAL_ACCURACY).unwrap() > 0.9);
    assert_eq!(opt.schedule_position().unwrap(), 12); // 4 updates x 3 epochs
    assert_eq!(opt.current(OptimParam::Lr).unwrap(), 0.5 * 0.5f64.powi(4));
    let cm = m.evaluate_classes(&x, &y, 1).unwrap();
    assert_eq!(cm.confusion.iter().sum::<i64>(), n as i64);
    // a validation set of the wrong shape is refused before training
    let r = m.fit_run(&mut opt, &mut f, &x, Targets::Labels(&y), Some((&x[..d * 3], Targets::Labels(&y))),
                      |_| ControlFlow::Continue(()));
    assert!(r.is_err());
    m.set_class_weights(Some(&[1.0, 2.0])).unwrap().set_label_smoothing(0.1).unwrap();
    m.set_loss(tlearn::Loss::Mse).unwrap();
    let t = vec![0f32; n * 2];
    let (mse, mae) = m.evaluate_regression(&x, &t).unwrap();
    assert!(mse >= 0.0 && mae >= 0.0);
    opt.schedule_step().unwrap();
    assert_eq!(s.get(sys::TLEARN_SCHED_GAMMA).unwrap(), 0.5);
    assert!(s.set_milestones(&[1]).is_err());
    f.set_checkpoint(None).unwrap();
    assert_eq!(f.get(sys::TLEARN_FIT_EPOCHS).unwrap(), 3.0);
}

#[test]
fn onnx_export_round_trip() {
    let dir = tmpdir("onnx-export");
    let (x, _) = blobs(8);
    let mut m = mlp(17);
    let want = m.predict(&x).unwrap();
    m.export_onnx(dir.join("m.onnx"), 17).unwrap();
    let data = m.export_onnx_bytes(17).unwrap();
    assert_eq!(data, std::fs::read(dir.join("m.onnx")).unwrap());
    assert_eq!(m.export_onnx_bytes(0).unwrap(), data); // 0 is opset 17
    let mut back = Model::import_onnx_bytes(&data).unwrap();
    assert_eq!(back.predict(&x).unwrap(), want);
    let mut back = Model::import_onnx(dir.join("m.onnx")).unwrap();
    assert_eq!(back.predict(&x).unwrap(), want);
    assert_eq!(m.export_onnx_bytes(12).err().unwrap().code(), status::EINVAL);
    assert_eq!(m.export_onnx(dir.join("m13.onnx"), 18).err().unwrap().code(), status::EINVAL);
    std::fs::remove_dir_all(&dir).unwrap();
}
