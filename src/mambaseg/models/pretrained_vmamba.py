"""VMamba v0 classification checkpoints -> VM-UNet, VM-UNetV2 and Mamba-UNet encoders (and mirrored decoders).

The three upstream projects initialise from ImageNet checkpoints of the early VMamba release (Liu et al.,
arXiv:2401.10166): ``vmamba_small_e238_ema.pth`` (VM-UNet, VM-UNetV2; depths [2, 2, 27, 2]) and
``vmamba_tiny_e292.pth`` (Mamba-UNet; [2, 2, 9, 2]), weights under the key ``"model"``. Their key layout ("v0")::

    patch_embed.proj.{weight,bias}, patch_embed.norm.{weight,bias}
    layers.{i}.blocks.{j}.ln_1.{weight,bias}
    layers.{i}.blocks.{j}.self_attention.{in_proj.weight, conv2d.weight, conv2d.bias, x_proj_weight,
        dt_projs_weight, dt_projs_bias, A_logs, Ds, out_norm.weight, out_norm.bias, out_proj.weight}
    layers.{i}.downsample.{norm.weight, norm.bias, reduction.weight}     (i < 3)
    norm.{weight,bias}, head.{weight,bias}

Later VMamba releases store the same weights under other names (``patch_embed.0/.2``, ``blocks.{j}.norm``,
``blocks.{j}.op``, ``classifier.{norm,head}``); :func:`checkpoint_filter_fn` maps them back to v0 in one place.

What each loader does, as the upstream ``load_from`` methods (but checked, and reported):

* **VM-UNet**: every checkpoint key that names an encoder parameter is copied (only the first ``depth`` blocks
  of each stage are used); then encoder stage X's blocks are mirrored into decoder stage ``layers_up.{3-X}``
  (upstream: 117 then 91 keys for the paper config from VMamba-small). Never loaded: the decoder
  ``upsample`` layers, ``final_up``, ``final_conv``.
* **VM-UNetV2**: encoder only (upstream's decoder mapping is commented out; V2 has no VSS decoder).
* **Mamba-UNet**: encoder + bottleneck ``norm`` copied, encoder stages mirrored into ``layers_up.1-3`` (197 of
  218 keys from VMamba-tiny); never loaded: ``concat_back_dim``, ``layers_up.0`` (PatchExpand), decoder
  ``upsample`` layers, ``norm_up``, ``up``, ``output``.

Unlike upstream, a checkpoint that is not a VMamba v0 classifier raises :class:`PretrainedMismatchError` before
anything is copied: no VSS-block keys, keys inside the encoder that have no place in it (MLPs or conv
downsampling of VMamba v2/v3, another block layout), or shape mismatches (another width, ``d_state`` or
``ssm_ratio``). A full segmentation ``state_dict`` of the model gets a hint to use ``model.load_state_dict``.
The one tolerated mismatch is the input conv: for ``in_channels=1`` its RGB weights are summed over the
channels (exactly what repeating a gray image to 3 channels computes); for other channel counts it is left at
its random init and listed in ``report.mismatched``.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from .pretrained import PretrainedMismatchError, PretrainedReport, copy_matching

__all__ = ["checkpoint_filter_fn", "load_vmamba_into_vmunet", "load_vmamba_into_vmunet_v2",
           "load_vmamba_into_mamba_unet", "load_vmamba_encoder"]

# newer VMamba names -> v0 names (regex on the whole key)
_RENAMES = [
    (re.compile(r"^patch_embed\.0\."), "patch_embed.proj."),
    (re.compile(r"^patch_embed\.2\."), "patch_embed.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.norm\."), r"\1.ln_1."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.op\."), r"\1.self_attention."),
    (re.compile(r"^classifier\.norm\."), "norm."),
    (re.compile(r"^classifier\.head\."), "head."),
]
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_STAGE = re.compile(r"^layers\.(\d+)\.(.+)$")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None
                         ) -> Dict[str, torch.Tensor]:
    """Normalise a VMamba classification state dict to the v0 key layout (see module docstring).

    Strips a DDP ``module.`` prefix and renames the later VMamba layout (``patch_embed.0/.2``,
    ``blocks.{j}.norm/op``, ``classifier.norm/head``) back to v0; v0 keys pass unchanged. ``model`` is accepted
    for timm-style signature compatibility and unused.
    """
    out: Dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        for pat, rep in _RENAMES:
            k2 = pat.sub(rep, k)
            if k2 != k:
                k = k2
                break
        out[k] = v
    return out


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def load_vmamba_encoder(model: nn.Module, state_dict: Mapping[str, torch.Tensor], report: PretrainedReport,
                        prefix: str, mirror: bool, reason: Callable[[str], str], model_name: str
                        ) -> PretrainedReport:
    """Shared loader: copy a v0 VMamba checkpoint into the encoder at ``prefix`` (``"vmunet."``...) and, when
    ``mirror``, encoder stage X's blocks into ``layers_up.{3-X}``. ``reason(key)`` explains a model key (without
    ``prefix``) that nothing was loaded into. Validates everything before copying anything."""
    sd = checkpoint_filter_fn(state_dict)
    own = model.state_dict()
    own_keys = list(own)
    fix = "; pass a VMamba v0 classification checkpoint (e.g. vmamba_small_e238_ema.pth / vmamba_tiny_e292.pth)"

    wrapper = prefix.rstrip(".") + "."
    if sum(k.startswith(wrapper) for k in sd) > len(sd) // 2:
        raise PretrainedMismatchError(
            f"this is a full {model_name} state dict (keys start with {wrapper!r}), not a classification "
            f"checkpoint; load it with model.load_state_dict(torch.load(path, map_location='cpu', "
            f"weights_only=True))")
    if not any(_BLOCK.match(k) and ".self_attention." in k for k in sd):
        sample = ", ".join(list(sd)[:5])
        raise PretrainedMismatchError(
            f"the checkpoint is not a VMamba v0 classifier: it has no 'layers.<i>.blocks.<j>.self_attention.*' "
            f"(or '.op.*') keys (first keys: {sample}){fix}")

    direct: Dict[str, torch.Tensor] = {}
    unknown, bad_shape, mismatched = [], [], []
    used = set()
    for k, v in sd.items():
        target = prefix + k
        if target in own:
            want = tuple(own[target].shape)
            if tuple(v.shape) == want:
                direct[target] = v
                used.add(k)
            elif k == "patch_embed.proj.weight" and v.dim() == 4 and v.shape[0] == want[0] \
                    and tuple(v.shape[2:]) == want[2:]:
                if want[1] == 1 and v.shape[1] == 3:
                    direct[target] = v.sum(dim=1, keepdim=True)        # == repeating a gray input to RGB
                    used.add(k)
                else:
                    mismatched.append((target, tuple(v.shape), want))
            else:
                bad_shape.append((k, tuple(v.shape), want))
            continue
        m_blk, m_stage = _BLOCK.match(k), _STAGE.match(k)
        if m_blk:
            block = f"{prefix}layers.{m_blk.group(1)}.blocks.{m_blk.group(2)}."
            if _has_prefix(own_keys, block):
                unknown.append(k)                                      # block exists, the key has no place in it
        elif m_stage:
            sub = m_stage.group(2).split(".")[0]
            if _has_prefix(own_keys, f"{prefix}layers.{m_stage.group(1)}."):
                unknown.append(k)                                      # e.g. conv downsample 'downsample.1.*'
            elif sub not in ("downsample", "blocks"):
                unknown.append(k)
        elif k.startswith("patch_embed."):
            unknown.append(k)
    if unknown:
        raise PretrainedMismatchError(
            f"the checkpoint has {len(unknown)} encoder key(s) with no place in {model_name}'s VMamba v0 "
            f"encoder, e.g. {', '.join(unknown[:4])}: it is another architecture (later VMamba versions with MLPs "
            f"or conv downsampling, or another backbone){fix}")
    if bad_shape:
        ex = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad_shape[:3])
        raise PretrainedMismatchError(
            f"{len(bad_shape)} checkpoint tensor(s) have other shapes than {model_name}'s encoder ({ex}): the "
            f"checkpoint is a VMamba of another width / d_state / ssm_ratio; mambaseg's encoder is VMamba v0 "
            f"(dims 96-768, d_state 16, ssm_ratio 2){fix}")

    mirrored: Dict[str, torch.Tensor] = {}
    if mirror:
        for k, v in sd.items():
            m = _BLOCK.match(k)
            if not m:
                continue
            target = f"{prefix}layers_up.{3 - int(m.group(1))}.blocks.{m.group(2)}.{m.group(3)}"
            if target in own and tuple(own[target].shape) == tuple(v.shape):
                mirrored[target] = v
                used.add(k)

    copy_matching(model, direct, report)
    copy_matching(model, mirrored, report, mirrored=True)
    report.mismatched.extend(mismatched)
    done = set(report.loaded) | set(report.mirrored)
    for k in own_keys:
        if k in done:
            continue
        short = k[len(prefix):] if k.startswith(prefix) else k
        if short.startswith("patch_embed.proj.weight") and any(t == k for t, _, _ in mismatched):
            report.missing[k] = (f"the checkpoint's input conv takes 3 channels, the model "
                                 f"{own[k].shape[1]}; left at its random init")
        elif short.startswith(("patch_embed.", "layers.")):
            report.missing[k] = "not in the checkpoint (its stage has fewer blocks than the model's)"
        else:
            report.missing[k] = reason(short)
    report.unused = [k for k in sd if k not in used]
    return report


def _decoder_block_reason(key: str) -> Optional[str]:
    m = re.match(r"^layers_up\.(\d+)\.blocks\.(\d+)\.", key)
    if m:
        return (f"decoder block mirrors encoder stage {3 - int(m.group(1))} block {m.group(2)}, which the "
                f"checkpoint does not have")
    return None


def _vmunet_reason(key: str) -> str:
    if re.match(r"^layers_up\.\d+\.upsample\.", key):
        return "decoder upsampling (PatchExpand2D): no counterpart in a classification checkpoint"
    if key.startswith(("final_up.", "final_conv.")):
        return "segmentation head: not in a classification checkpoint"
    return _decoder_block_reason(key) or "no counterpart in a classification checkpoint"


def _mamba_unet_reason(key: str) -> str:
    if key.startswith("layers_up.0."):
        return "bottleneck PatchExpand (layers_up.0): no counterpart in a classification checkpoint"
    if re.match(r"^layers_up\.\d+\.upsample\.", key):
        return "decoder upsampling (PatchExpand): no counterpart in a classification checkpoint"
    if key.startswith("concat_back_dim."):
        return "skip-fusion Linear: no counterpart in a classification checkpoint"
    if key.startswith(("norm_up.", "up.", "output.")):
        return "segmentation head: not in a classification checkpoint"
    if key.startswith("norm."):
        return "the checkpoint has no final 'norm'"
    return _decoder_block_reason(key) or "no counterpart in a classification checkpoint"


def _vmunet_v2_reason(key: str) -> str:
    return ("VM-UNetV2 decoder (attention, SDI, deconvolutions, heads): upstream initialises only the encoder "
            "from the checkpoint; deliberately not mirrored")


def load_vmamba_into_vmunet(model, state_dict, report):
    """VM-UNet: encoder + encoder stages mirrored into the decoder (upstream ``VMUNet.load_from``)."""
    return load_vmamba_encoder(model, state_dict, report, "vmunet.", True, _vmunet_reason, "VM-UNet")


def load_vmamba_into_vmunet_v2(model, state_dict, report):
    """VM-UNetV2: encoder only (upstream ``VMUNetV2.load_from``)."""
    return load_vmamba_encoder(model, state_dict, report, "vmunet.", False, _vmunet_v2_reason, "VM-UNetV2")


def load_vmamba_into_mamba_unet(model, state_dict, report):
    """Mamba-UNet: encoder + bottleneck norm + encoder stages mirrored into ``layers_up.1-3``
    (upstream ``MambaUnet.load_from``)."""
    return load_vmamba_encoder(model, state_dict, report, "mamba_unet.", True, _mamba_unet_reason, "Mamba-UNet")


# ---------------------------------------------------------------------------------------------------------------
# Pretrained: VMamba-T v0 classification checkpoint -> vssm_encoder (upstream load_pretrained_ckpt)
# ---------------------------------------------------------------------------------------------------------------
def load_vmamba_v0_into_vssm_encoder(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                                     report: PretrainedReport, skip: Callable[[str, Mapping], bool],
                                     model_name: str) -> PretrainedReport:
    """Shared by Swin-UMamba and Swin-UMamba†: drop the keys ``skip(key, sd)`` names, prefix ``vssm_encoder.``,
    rename ``layers.i.downsample.*`` -> ``downsamples.i.*``, require equal shapes (upstream asserts; here a
    PretrainedMismatchError before anything is copied)."""
    sd = checkpoint_filter_fn(state_dict)        # DDP prefix, later VMamba names -> v0
    own = model.state_dict()
    fix = "; pass the VMamba-T v0 checkpoint vssmtiny_dp01_ckpt_epoch_292.pth (vmamba_tiny_e292.pth)"
    if sum(k.startswith("vssm_encoder.") for k in sd) > len(sd) // 2:
        raise PretrainedMismatchError(f"this is a full {model_name} state dict, not a classification checkpoint; "
                                      f"load it with model.load_state_dict(torch.load(path, weights_only=True))")
    if not any(".self_attention." in k for k in sd):
        raise PretrainedMismatchError(f"the checkpoint is not a VMamba v0 classifier (no "
                                      f"'layers.<i>.blocks.<j>.self_attention.*' keys){fix}")
    pairs, bad, unused = {}, [], []
    for k, v in sd.items():
        if skip(k, sd):
            unused.append(k)
            continue
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", k)
        t = "vssm_encoder." + (f"downsamples.{m.group(1)}.{m.group(2)}" if m else k)
        if t not in own:
            bad.append(f"{k} (no place in the encoder)")
        elif tuple(own[t].shape) != tuple(v.shape):
            bad.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[t].shape)}")
        else:
            pairs[t] = v
    if bad:
        raise PretrainedMismatchError(f"the checkpoint does not fit {model_name}'s VMamba-T v0 encoder: {len(bad)} "
                                      f"key(s), e.g. {'; '.join(bad[:3])}{fix}")
    copy_matching(model, pairs, report)
    for k in own:
        if k not in pairs:
            report.missing[k] = ("skipped by upstream's loader (patch embedding / final norm)"
                                 if k.startswith("vssm_encoder.") else
                                 "stem / decoder / heads: no counterpart in a classification checkpoint")
    report.unused = unused
    return report
