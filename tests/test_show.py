"""show.py: the weights it colours are weights.token_weights of the model's own signals, and it writes both
pictures and the terminal view for a tiny random model."""
import pytest
import torch

import show
import weights


def test_signals_and_weights_come_from_weights_py(tiny_checkpoint):
    from checkpoints import load_checkpoint
    model, tok = load_checkpoint(tiny_checkpoint("llama")[0])
    prompt, text = "Question: 2+2?\nAnswer:", " 2+2=<<2+2=4>>4\n#### 4"
    ids, p, u = show.token_signals(model, tok, prompt, text)
    assert ids == tok.encode(text)
    with torch.no_grad():  # p = softmax of one unpadded pass at each answer token
        full = tok.encode(prompt) + ids
        probs = torch.softmax(model(torch.tensor([full[:-1]]))[0, -len(ids):].float(), -1)
    assert torch.allclose(p, probs[torch.arange(len(ids)), ids], rtol=1e-4, atol=1e-6)
    ws = show.rule_weights(p, u)
    assert list(ws) == ["sft", "dft", "infosft", "profit", "prift-mass", "prift-prob"]
    assert torch.equal(ws["dft"], p) and torch.equal(ws["prift-prob"], p) and torch.equal(ws["sft"], torch.ones_like(p))
    assert torch.equal(ws["prift-mass"], (u >= 0.5).float()) and torch.equal(ws["profit"], (p >= 0.1).float())
    assert torch.equal(ws["infosft"], weights.token_weights("infosft", p))


def test_layout_wraps_and_breaks_lines():
    spots = show.layout(["ab", "cd\ne", "fgh", "ijklm"], width=6)
    assert spots == [(0, 0, "ab"), (0, 2, "cd"), (1, 0, "e"), (1, 1, "fgh"), (2, 0, "ijklm")]


def test_cli_writes_both_pictures_and_colours(tiny_checkpoint, tmp_path, capsys):
    folder = tiny_checkpoint("llama")[0]
    png, curves = tmp_path / "show.png", tmp_path / "curves.png"
    show.main([f"--model={folder}", "--prompt=Question: 3*4?\\nAnswer:", "--text= 3*4=<<3*4=12>>12\\n#### 12",
               f"--png={png}", f"--curves={curves}", "--color=always"])
    out = capsys.readouterr().out
    assert png.stat().st_size > 0 and curves.stat().st_size > 0
    assert "\x1b[48;2;" in out and "prift-mass" in out and "calc" in out  # ANSI backgrounds and the class table
    with pytest.raises(SystemExit, match="--index=5000"):
        show.main([f"--model={folder}", "--index=5000"])
    with pytest.raises(SystemExit, match="error:"):
        show.main([f"--model={tmp_path / 'missing'}", "--text=x"])
