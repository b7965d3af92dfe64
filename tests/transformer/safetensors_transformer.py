"""torch transformer modules' state_dicts, saved as safetensors, imported into models built by
hand with the public API (the Python binding), by their state_dict names; a name map where
the names differ (doc/guide.md, "Transformer weights from safetensors"). Outputs against
torch's at eval (rtol 1e-4, atol 1e-5).

  encoder   nn.TransformerEncoder(nn.TransformerEncoderLayer(batch_first=True)), post-norm
            ReLU and pre-norm GELU: tlearn_model_add_transformer_block's names are the
            state_dict's (layers.0.self_attn.in_proj_weight, ...); no map
  vit       torchvision VisionTransformer(32, 4, 4 layers, 128): blocks built from layernorm,
            attention, linear calls named as torchvision's modules; the patch embedding's
            tensors mapped (conv_proj.*, class_token, encoder.pos_embedding -> patch.*)
  bert      the BERT-style encoder of onnx_transformer.py: query/key/value concatenated
            into in_proj_weight/in_proj_bias (torch.cat, in that order) before saving, the
            output Linear mapped onto the attention's out_proj, position_ids skipped
Fails, never skips, without torch."""
import os
import sys
import tempfile

import numpy as np

try:
    import torch
    import torchvision
except ImportError as e:
    sys.exit("safetensors_transformer: %s: install python3-torch and python3-torchvision" % e)

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import tlearn  # noqa: E402  (examples/python on PYTHONPATH)
from onnx_transformer import Bert, encoder, randomize  # noqa: E402
from test_bindings import write_safetensors  # noqa: E402  (the minimal writer)


def save_safetensors(tensors, path):
    write_safetensors(path, {k: v.detach().numpy() for k, v in tensors.items()})


def close(got, want, what):
    got = np.asarray(got).reshape(want.shape)
    err = np.abs(got - want).max()
    print("%s: max |tlearn - torch| = %.3g (outputs up to %.3g)" % (what, err, np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def case_encoder(tmp):
    for norm_first, act in ((False, "relu"), (True, "gelu")):
        torch.manual_seed(0)
        net = randomize(encoder(norm_first, act)).eval()
        x = torch.randn(3, 10, 64)
        want = net(x).detach().numpy()
        path = os.path.join(tmp, "enc.safetensors")
        save_safetensors(net.state_dict(), path)
        with tlearn.Model.with_input("x", (10, 64)) as m:
            for i in range(2):
                m.add_transformer_block("layers.%d" % i, 4, 128, act, norm_first, 0.1)
            assert m.import_safetensors(path) == len(net.state_dict())
            close(m.run(x.numpy())[0], want, "encoder norm_first=%s %s" % (norm_first, act))


def case_vit(tmp):
    torch.manual_seed(0)
    net = randomize(torchvision.models.VisionTransformer(32, 4, 4, 4, 128, 256, num_classes=10))
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    want = net(x).detach().numpy()
    path = os.path.join(tmp, "vit.safetensors")
    save_safetensors(net.state_dict(), path)
    names = {"conv_proj.weight": "patch.conv_proj.weight", "conv_proj.bias": "patch.conv_proj.bias",
             "class_token": "patch.class_token", "encoder.pos_embedding": "patch.pos_embedding"}
    with tlearn.Model(3, 32, 32) as m:
        m.add_patch_embed("patch", 128, 4)
        prev = "patch"
        for i in range(4):
            b = "encoder.layers.encoder_layer_%d." % i
            m.add_layernorm(b + "ln_1", eps=1e-6).add_attention(b + "self_attention", 4)
            m.add_add(b + "add1", prev).add_layernorm(b + "ln_2", eps=1e-6)
            m.add_linear(b + "mlp.0", 256).add_activation(b + "mlp.1", "gelu")
            m.add_linear(b + "mlp.3", 128).add_add(b + "add2", b + "add1")
            prev = b + "add2"
        m.add_layernorm("encoder.ln", eps=1e-6).add_token_pool("cls").add_linear("heads.head", 10)
        assert m.import_safetensors(path, lambda n: names.get(n, n)) == len(net.state_dict())
        close(m.predict(x.numpy()), want, "vit")


def case_bert(tmp):
    torch.manual_seed(0)
    net = randomize(Bert()).eval()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    want = net(ids, mask).detach().numpy()
    sd = dict(net.state_dict())
    for i in range(2):  # the fused attention holds q, k, v as one packed projection
        a = "layers.%d.attention." % i
        sd[a + "in_proj_weight"] = torch.cat([sd.pop(a + p + ".weight")
                                              for p in ("query", "key", "value")])
        sd[a + "in_proj_bias"] = torch.cat([sd.pop(a + p + ".bias")
                                            for p in ("query", "key", "value")])
    path = os.path.join(tmp, "bert.safetensors")
    save_safetensors(sd, path)

    def name_map(name):
        if name == "position_ids":
            return None  # a buffer of 0..max_len-1: the layer knows positions
        return name.replace(".attn_out.", ".attention.out_proj.")

    with tlearn.Model.with_input("input_ids", (12,), "int32") as m:
        m.add_input("attention_mask", (12,), "int32").set_next_input("input_ids")
        m.add_embedding("word_embeddings", 50, 32).add_position_embedding("position_embeddings", 16)
        m.add_layernorm("norm", eps=1e-12)
        prev = "norm"
        for i in range(2):
            b = "layers.%d." % i
            m.add_attention(b + "attention", 4, mask="attention_mask").add_add(b + "add1", prev)
            m.add_layernorm(b + "attn_norm", eps=1e-12).add_linear(b + "intermediate", 64)
            m.add_activation(b + "gelu", "gelu").add_linear(b + "output", 32)
            m.add_add(b + "add2", b + "attn_norm").add_layernorm(b + "out_norm", eps=1e-12)
            prev = b + "out_norm"
        m.add_token_pool("first").add_linear("pooler", 32).add_activation("tanh", "tanh")
        m.add_linear("classifier", 3)
        assert m.import_safetensors(path, name_map) == len(sd) - 1
        close(m.run(ids.numpy(), mask.numpy())[0], want, "bert")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        {"encoder": case_encoder, "vit": case_vit, "bert": case_bert}[sys.argv[1]](tmp)


if __name__ == "__main__":
    main()
