"""Why a unit fires on its top images: pixel projections, occlusion maps, channel contributions from below.

    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 64, 64)                                 # normalized model inputs
    targets = Targets(image=[0, 1], unit=[7, 7], y=[1, 0], x=[0, 1])   # the unit's top-k rows, at their peaks
    maps = project(model, "layer4", images, targets, method="deconvnet").maps     # (2, 3, 64, 64)
    boxes = np.array([[0, 0, 64, 64], [0, 0, 64, 64]])                 # receptive-field boxes, input pixels
    heat = occlusion(model, "layer4", images, targets, boxes).maps     # [(64, 64), (64, 64)]
    top = contributions(model, "layer4", "layer3", images, targets, top=16).table()

For speed on the CPU, pass prepare(model, keep=[the layers read]): batch norms folded, channels-last.
Everything works on plain inputs (a model in eval mode, normalized images, the index's rows as Targets,
boxes in model-input pixels) and returns plain arrays; mapping boxes and maps back to original pixels is
pipeline.preprocess's. Each call leaves the model as it found it: hooks detach, parameters that needed a
gradient need one again.
"""

from actindex.pipeline.attribution.contributions import Contributions, contributions
from actindex.pipeline.attribution.occlusion import Occlusions, default_window, occlusion
from actindex.pipeline.attribution.prepare import prepare
from actindex.pipeline.attribution.projection import Projections, project
from actindex.pipeline.attribution.rules import METHODS, BackwardRules, Method
from actindex.pipeline.attribution.targets import Targets, plan_batches
from actindex.pipeline.attribution.trace import find_module, forward_to, frozen, one_hot, peak_values
from actindex.pipeline.errors import InvalidInputError, UnknownNameError, UnsupportedActivationError

__all__ = [
    "METHODS", "BackwardRules", "Contributions", "InvalidInputError", "Method", "Occlusions", "Projections",
    "Targets", "UnknownNameError", "UnsupportedActivationError", "contributions", "default_window",
    "find_module", "forward_to", "frozen", "occlusion", "one_hot", "peak_values", "plan_batches", "prepare",
    "project",
]  # fmt: skip
