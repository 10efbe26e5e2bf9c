"""VNN-LIB properties and `gls verify`: the competition's file shapes, errors with line and column, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch
from cli_runner import run_cli

from gls_core import forward, kaiming_uniform, network
from gls_core.nets.onnx_io import to_onnx
from gls_core.training.checkpoint import save_model
from gls_core.verify import Property, VerifyOptions, robustness, verify_cases
from gls_core.verify.vnnlib import VnnlibError, read_vnnlib, read_vnnlib_cases


def mnist_style(x: torch.Tensor, label: int, eps: float, classes: int = 10) -> str:
    """A property written the way the VNN-COMP MNIST benchmarks write them."""
    flat = x.reshape(-1).tolist()
    lines = ["; robustness of one image", *(f"(declare-const X_{i} Real)" for i in range(len(flat))),
             *(f"(declare-const Y_{j} Real)" for j in range(classes)), "; input box"]
    for i, value in enumerate(flat):
        lines += [f"(assert (<= X_{i} {min(1.0, value + eps)!r}))", f"(assert (>= X_{i} {max(0.0, value - eps)!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    lines.append(f"(assert (or\n    {others}\n))")
    return "\n".join(lines) + "\n"


def test_mnist_style_property_is_the_robustness_property() -> None:
    spec = network("cnn3-tiny", "mnist")
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prop = read_vnnlib(mnist_style(x, 3, 0.05), spec.input_shape, 10)
    expected = robustness(spec, x, 3, 0.05)
    torch.testing.assert_close(prop.lower, expected.lower)
    torch.testing.assert_close(prop.upper, expected.upper)
    torch.testing.assert_close(prop.C, expected.C)
    torch.testing.assert_close(prop.d, expected.d)


def test_single_constraints_and_constants() -> None:
    text = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 -1)) (assert (<= X_0 1.5))
(assert (<= 0 X_1)) (assert (>= 2 X_1))
(assert (<= Y_0 0.25))
"""
    prop = read_vnnlib(text, (2,), 2)
    assert prop.lower.tolist() == [-1.0, 0.0] and prop.upper.tolist() == [1.5, 2.0]
    assert prop.C.tolist() == [[1.0, 0.0]] and prop.d.tolist() == [-0.25]  # unsafe Y_0 <= 0.25: safe Y_0 - 0.25 > 0


@pytest.mark.parametrize("text, message", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", r"line 2, column 1: '\(' is never closed"),
    ("(declare-const X_0 Real))", r"line 1, column 25: '\)' without a matching"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 Y_0))", r"line 2, column 10: Y_0 is used but never declared"),
    ("(declare-const X_5 Real)", r"line 1, column 16: X_5 is out of range: the network has 2 inputs"),
    ("(declare-const X_0 Int)", r"line 1, column 16: only X_i and Y_j of sort Real"),
    ("(define-fun f () Real 1)", r"line 1, column 2: expected \(declare-const"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 one))", r"line 2, column 17: expected a variable or a number"),
])
def test_malformed_files_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(VnnlibError, match=message):
        read_vnnlib(text, (2,), 2)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prop.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    with pytest.raises(VnnlibError) as error:
        read_vnnlib(path, (2,), 2)
    assert str(error.value) == f"{path}: line 2, column 1: '(' is never closed"
    with pytest.raises(VnnlibError, match=f"^{re.escape(str(tmp_path / 'missing.vnnlib'))}: No such file"):
        read_vnnlib(tmp_path / "missing.vnnlib", (2,), 2)
    path.write_bytes(b"\xff\xfe(declare-const")
    with pytest.raises(VnnlibError, match=f"^{re.escape(str(path))}: not a VNN-LIB text file"):
        read_vnnlib(str(path), (2,), 2)


def test_unsupported_and_incomplete_properties_are_refused() -> None:
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    box = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
    with pytest.raises(VnnlibError, match="a constraint must bound one input or relate outputs only"):
        read_vnnlib(head + box + "(assert (<= X_0 Y_1))", (1,), 2)
    with pytest.raises(VnnlibError, match="read it with read_vnnlib_cases"):
        read_vnnlib(head + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))\n"
                    "(assert (<= Y_0 Y_1))", (1,), 2)
    with pytest.raises(VnnlibError, match="X_0 has no lower and upper bound"):
        read_vnnlib(head + "(assert (<= X_0 1))\n(assert (<= Y_0 Y_1))", (1,), 2)
    with pytest.raises(VnnlibError, match="no output constraint"):
        read_vnnlib(head + box, (1,), 2)


HEAD3 = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n"


def test_conjunctions_of_output_constraints_are_one_group_and_assertions_are_conjoined() -> None:
    box = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
    # ACAS Xu's shape: several top-level assertions, all of which must hold for the input to be unsafe
    acas = read_vnnlib(HEAD3 + box + "(assert (<= Y_0 Y_1))\n(assert (<= Y_0 Y_2))", (1,), 3)
    assert acas.C.tolist() == [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]] and acas.groups is not None
    assert acas.groups.tolist() == [0, 0] and acas.num_groups == 1
    mixed = read_vnnlib(HEAD3 + box + "(assert (or (and (<= Y_0 Y_1) (<= Y_1 0.5)) (>= Y_2 Y_0)))", (1,), 3)
    assert mixed.groups is not None and mixed.groups.tolist() == [0, 0, 1]
    assert mixed.d.tolist() == [0.0, -0.5, 0.0]
    # at Y = (1, 0, 0.6) the first case fails (Y_0 > Y_1) and so does the second (Y_2 < Y_0): the property holds
    outputs = torch.tensor([[1.0, 0.0, 0.6]], dtype=torch.float64)
    assert float(mixed.worst(outputs @ mixed.C.T + mixed.d)) > 0
    outputs = torch.tensor([[0.2, 0.4, 0.0]], dtype=torch.float64)  # Y_0 <= Y_1 <= 0.5: the first case is reached
    assert float(mixed.worst(outputs @ mixed.C.T + mixed.d)) <= 0


def test_disjunctions_of_input_boxes_are_one_property_per_box() -> None:
    text = (HEAD3 + "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1))\n"
            "            (and (>= X_0 2) (<= X_0 3) (<= Y_0 Y_2))\n"
            "            (and (>= X_0 0) (<= X_0 1) (<= Y_1 Y_2))))")
    cases = read_vnnlib_cases(text, (1,), 3)
    assert [(c.lower.tolist(), c.upper.tolist()) for c in cases] == [([0.0], [1.0]), ([2.0], [3.0])]
    assert cases[0].C.tolist() == [[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]] and cases[0].groups is None
    assert cases[1].C.tolist() == [[1.0, 0.0, -1.0]]


def test_a_vnnlib_file_with_several_boxes_is_decided_as_a_whole(tmp_path: Path) -> None:
    spec = network("fc-16", "digits")
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0)).double()
    x = torch.rand(2, *spec.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    label = forward(spec, theta.view(1, -1), x)[0].argmax(1)
    boxes = []
    for i in range(2):
        others = [j for j in range(10) if j != int(label[i])]
        bounds = " ".join(f"(>= X_{k} {max(0.0, v - 1e-4)!r}) (<= X_{k} {min(1.0, v + 1e-4)!r})"
                          for k, v in enumerate(x[i].reshape(-1).tolist()))
        unsafe = " ".join(f"(and {bounds} (>= Y_{j} Y_{int(label[i])}))" for j in others)
        boxes.append(unsafe)
    declare = "".join(f"(declare-const X_{k} Real)\n" for k in range(64)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(10))
    text = declare + f"(assert (or {' '.join(boxes)}))"
    cases = read_vnnlib_cases(text, spec.input_shape, 10)
    assert len(cases) == 2 and all(c.C.shape == (9, 10) for c in cases)
    verdict = verify_cases(spec, theta, cases, VerifyOptions(timeout=20))
    assert verdict.status == "verified"  # a tiny radius around each correctly predicted point
    far = Property(torch.zeros(spec.input_shape, dtype=torch.float64), torch.ones(spec.input_shape,
                                                                                  dtype=torch.float64),
                   cases[1].C, cases[1].d)
    verdict = verify_cases(spec, theta, [cases[0], far], VerifyOptions(timeout=20))
    assert verdict.status == "falsified" and verdict.counterexample is not None
    assert float(far.worst(far.rows(spec, theta, verdict.counterexample.unsqueeze(0)))) <= 0


gls = run_cli


def test_gls_verify_answers_vnnlib_properties_of_an_onnx_model(tmp_path: Path) -> None:
    spec = network("fc-16", "digits")
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    model = tmp_path / "model.onnx"
    to_onnx(spec, theta, model)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    label = int(forward(spec, theta.double().view(1, -1), x.unsqueeze(0))[0, 0].argmax())
    (tmp_path / "tiny.vnnlib").write_text(mnist_style(x, label, 1e-4))
    (tmp_path / "huge.vnnlib").write_text(mnist_style(x, (label + 1) % 10, 1.0))  # the wrong label, whole cube
    result = gls("verify", str(model), str(tmp_path / "tiny.vnnlib"), "--timeout", "20", "--result",
                 str(tmp_path / "tiny.txt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unsat" and (tmp_path / "tiny.txt").read_text() == "unsat\n"
    result = gls("verify", str(model), str(tmp_path / "huge.vnnlib"), "--timeout", "20", "--result",
                 str(tmp_path / "huge.txt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sat"
    text = (tmp_path / "huge.txt").read_text()
    assert text.startswith("sat\n(")
    values = dict(item.strip("() \n").split() for item in text[4:].strip()[1:-1].split("\n"))
    point = torch.tensor([float(values[f"X_{i}"]) for i in range(64)], dtype=torch.float64).view(1, 1, 8, 8)
    logits = forward(spec, theta.double().view(1, -1), point)[0, 0]
    assert int(logits.argmax()) != (label + 1) % 10 or float(logits.max()) == float(logits[(label + 1) % 10])
    torch.testing.assert_close(torch.tensor([float(values[f"Y_{j}"]) for j in range(10)], dtype=torch.float64),
                               logits, rtol=1e-5, atol=1e-5)


def test_gls_verify_refuses_unsupported_models_and_settings_with_exit_2(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Sigmoid", ["x"], ["y"], name="squash")
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", onnx.TensorProto.FLOAT, [1, 2])],
                                   [value("y", onnx.TensorProto.FLOAT, [1, 2])])
    model = tmp_path / "sigmoid.onnx"
    model.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    prop = tmp_path / "p.vnnlib"
    prop.write_text(HEAD3.replace("(declare-const Y_2 Real)\n", "") + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
                    "(assert (<= Y_0 Y_1))")
    result = gls("verify", str(model), str(prop))
    assert result.returncode == 2 and "node 'squash': operator Sigmoid is not supported" in result.stderr
    assert "Traceback" not in result.stderr
    spec = network("fc-16", "digits")
    good = tmp_path / "model.onnx"
    to_onnx(spec, kaiming_uniform(spec, torch.Generator().manual_seed(0)), good)
    result = gls("verify", str(good), str(tmp_path / "p.vnnlib"), "--set", "attack_restarts=many")
    assert result.returncode == 2 and "--set attack_restarts=many" in result.stderr and "Traceback" not in result.stderr


def test_gls_verify_on_test_images_writes_verdicts_and_summary(tmp_path: Path) -> None:
    spec = network("fc-16", "digits")
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    save_model(tmp_path / "model.safetensors", theta, "fc-16", "digits")
    out = tmp_path / "verdicts.json"
    result = gls("verify", str(tmp_path / "model.safetensors"), "--eps", "0.01", "--limit", "6", "--timeout", "20",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    summary = data["summary"]
    assert summary["n"] == 6 and summary["verified"] + summary["falsified"] + summary["unknown"] == 6
    assert len(data["verdicts"]) == 6 and {v["status"] for v in data["verdicts"]} <= {"verified", "falsified"}
    assert "verified" in result.stdout
    bad = gls("verify", str(tmp_path / "model.safetensors"))
    assert bad.returncode == 2 and "give --eps" in bad.stderr
