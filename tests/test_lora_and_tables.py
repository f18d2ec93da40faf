"""The layer tables and the embedded FaceID LoRA key mapping, checked against diffusers' real UNet configs."""

import pytest
import torch

import ipadapter_core as core
from _reference import REAL_SD15_CONFIG, REAL_SDXL_CONFIG, tiny_unet, topology_of
from dev.standins.ipadapter import make_state_dict
from ipadapter_core.lora import lora_delta, processor_names, to_diffusers_lora

REAL = {"sd15": REAL_SD15_CONFIG, "sdxl": REAL_SDXL_CONFIG}


def real_unet(family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**REAL[family])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_hard_coded_tables_equal_the_real_unets(family):
    expected = core.Topology.sd15() if family == "sd15" else core.Topology.sdxl()
    assert topology_of(real_unet(family)) == expected


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_processor_numbering_matches_diffusers(family):
    unet = real_unet(family)
    topo = topology_of(unet)
    assert list(processor_names(topo)[n] for n in range(len(unet.attn_processors))) == list(unet.attn_processors)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_embedded_lora_maps_like_diffusers(family):
    unet = tiny_unet(family)
    topo = topology_of(unet)
    nested = make_state_dict(f"faceid_{family}", scale="tiny", widths=topo.widths_checkpoint_order, cross_dim=unet.config.cross_attention_dim)
    lora = {k: v for k, v in nested["ip_adapter"].items() if "_lora." in k}
    ours = {f"unet.{k}": v for k, v in to_diffusers_lora(lora, topo).items()}
    theirs = unet._load_ip_adapter_loras([nested])[0]
    assert ours.keys() == theirs.keys() and len(ours) == 8 * 2 * len(topo.layers)
    assert all(ours[k] is theirs[k] for k in ours)


def test_lora_errors_and_delta():
    topo = core.Topology.sd15()
    with pytest.raises(ValueError, match="processor 99"):
        to_diffusers_lora({"99.to_q_lora.down.weight": torch.zeros(1)}, topo)
    with pytest.raises(ValueError, match="unexpected"):
        to_diffusers_lora({"1.to_k_ip.weight": torch.zeros(1)}, topo)
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    assert torch.allclose(lora_delta(down, up, 0.5), 0.5 * up @ down)
