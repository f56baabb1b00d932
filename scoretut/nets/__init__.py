"""Networks: conditioning embeddings, the residual MLP used for the 2D toys, the image U-Net.

Each network stores its constructor arguments (``net.config()``, plain data) and is rebuilt with
``cls.from_config(config)``; the pipelines (:mod:`scoretut.pipelines`) rebuild whole models from
their recipes.
"""

from scoretut.nets.embeddings import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding
from scoretut.nets.mlp import ACTIVATIONS, ScoreMLP
from scoretut.nets.unet import UNet

__all__ = ["ACTIVATIONS", "EMBEDDINGS", "GaussianFourierEmbedding", "ScoreMLP", "SinusoidalEmbedding", "UNet"]
