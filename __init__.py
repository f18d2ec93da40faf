"""IPAdapter Kit: IP-Adapter image prompts for ComfyUI (Ye et al. 2023).

One registration table; importing the pack registers the `ipadapter` model folder and, inside a running server,
the workflow-conversion route (README "Coming from IPAdapter Plus"), and nothing else.
"""

from .nodes import apply, embeds, enhancer, faceid, image, loaders, regional, style, tiled, weights
from .nodes._folders import register_folders
from .nodes._migration_routes import register as register_migration_route
from .nodes.compat import legacy_nodes, older_pack

# (permanent node id, class, display name)
NODES = (
    ("IPAKitModelLoader", loaders.ModelLoader, "IPAdapter Model Loader (IPAKit)"),
    ("IPAKitUnifiedLoader", loaders.UnifiedLoader, "IPAdapter Unified Loader (IPAKit)"),
    ("IPAKitApply", apply.Apply, "Apply IPAdapter (IPAKit)"),
    ("IPAKitApplyEmbeds", apply.ApplyEmbeds, "Apply IPAdapter Embeds (IPAKit)"),
    ("IPAKitApplyClipVisionEnhancer", enhancer.ApplyEnhancer, "Apply IPAdapter ClipVision Enhancer (IPAKit)"),
    ("IPAKitApplyTiled", tiled.ApplyTiled, "Apply IPAdapter Tiled (IPAKit)"),
    ("IPAKitApplyStyleComposition", style.StyleComposition, "Apply IPAdapter Style & Composition (IPAKit)"),
    ("IPAKitApplyPreciseStyle", style.PreciseStyle, "Apply IPAdapter Precise Style Transfer (IPAKit)"),
    ("IPAKitApplyPreciseComposition", style.PreciseComposition, "Apply IPAdapter Precise Composition (IPAKit)"),
    ("IPAKitEncode", embeds.Encode, "IPAdapter Encode (IPAKit)"),
    ("IPAKitCombineEmbeds", embeds.CombineEmbeds, "IPAdapter Combine Embeds (IPAKit)"),
    ("IPAKitSaveEmbeds", embeds.SaveEmbeds, "IPAdapter Save Embeds (IPAKit)"),
    ("IPAKitLoadEmbeds", embeds.LoadEmbeds, "IPAdapter Load Embeds (IPAKit)"),
    ("IPAKitPrepImage", image.PrepImage, "Prep Image For CLIP Vision (IPAKit)"),
    ("IPAKitNoise", image.Noise, "IPAdapter Noise (IPAKit)"),
    ("IPAKitInsightFaceLoader", faceid.InsightFaceLoader, "InsightFace Loader (IPAKit)"),
    ("IPAKitApplyFaceID", faceid.ApplyFaceID, "Apply IPAdapter FaceID (IPAKit)"),
    ("IPAKitFaceIDLoRA", faceid.FaceIDLoRA, "IPAdapter FaceID LoRA (IPAKit)"),
    ("IPAKitWeights", weights.Weights, "IPAdapter Weights (IPAKit)"),
    ("IPAKitWeightsFromStrategy", weights.WeightsFromStrategy, "IPAdapter Weights From Strategy (IPAKit)"),
    ("IPAKitPromptScheduleFromWeightsStrategy", weights.PromptScheduleFromWeightsStrategy,
     "Prompt Schedule From Weights Strategy (IPAKit)"),
    ("IPAKitCombineWeights", weights.CombineWeights, "IPAdapter Combine Weights (IPAKit)"),
    ("IPAKitRegionalConditioning", regional.RegionalConditioning, "IPAdapter Regional Conditioning (IPAKit)"),
    ("IPAKitCombineParams", regional.CombineParams, "IPAdapter Combine Params (IPAKit)"),
    ("IPAKitApplyFromParams", regional.ApplyFromParams, "Apply IPAdapter from Params (IPAKit)"),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, cls, _ in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, _, name in NODES}

# The older IPAdapter Plus pack's ids, answered by thin translating nodes only where that pack is absent (it keeps
# them otherwise); the frontend extension in WEB_DIRECTORY converts workflows that use them through the route.
LEGACY_NODES = legacy_nodes(NODE_CLASS_MAPPINGS)
NODE_CLASS_MAPPINGS.update({old_id: cls for old_id, (cls, _) in LEGACY_NODES.items()})
NODE_DISPLAY_NAME_MAPPINGS.update({old_id: name for old_id, (_, name) in LEGACY_NODES.items()})
WEB_DIRECTORY = "./web"

register_folders()
register_migration_route(older_pack(), list(LEGACY_NODES))
