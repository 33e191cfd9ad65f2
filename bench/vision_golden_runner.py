"""Runs inside bench/.venv-vision (see bench/vision_golden.py): torchvision's and timm's models on fixed weights
and inputs, written as JSON to the path given."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from vision_reference import CASES, OUTPUT_CASES, fixed_input, fixed_state  # noqa: E402

# torchvision 0.28's compiled operators, declared without kernels so that its Python package imports beside a
# torch build it was not compiled against (its meta registrations look these up at import).
_OPERATORS = [
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) "
    "-> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
]
_LIBRARY = torch.library.Library("torchvision", "DEF")
for schema in _OPERATORS:
    _LIBRARY.define(schema)

import timm  # noqa: E402
import torchvision  # noqa: E402


def build(library: str, arch: str, num_classes: int) -> torch.nn.Module:
    if library == "timm":
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def main(out: str) -> None:
    golden = {"torchvision": torchvision.__version__, "timm": timm.__version__, "torch": torch.__version__}
    for name, (library, arch, num_classes, shape) in CASES.items():
        model = build(library, arch, num_classes).eval()
        entry = {"keys": [[k, list(v.shape)] for k, v in model.state_dict().items()]}
        if name in OUTPUT_CASES:
            model.load_state_dict(fixed_state(model))
            with torch.no_grad():
                entry["output"] = model(fixed_input(shape)).tolist()
        golden[name] = entry
        print(name, len(entry["keys"]), "keys", flush=True)
    lines = ",\n".join(f"{json.dumps(name)}: {json.dumps(entry)}" for name, entry in golden.items())
    Path(out).write_text("{\n" + lines + "\n}\n")  # one architecture a line


if __name__ == "__main__":
    main(sys.argv[1])
