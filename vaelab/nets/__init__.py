"""Networks: encoder and decoder backbones (MLP, ConvNet, resnet), discriminators, your own
factories, and the gated PixelCNN over code grids."""

from .backbones import (  # noqa: F401
    ACTIVATIONS,
    DISCRIMINATORS,
    NETS,
    NetFactory,
    NetSpec,
    ResidualBlock,
    Tanh,
    build_nets,
    check_net,
    check_outputs,
    check_trusted,
    conv_discriminator,
    conv_nets,
    is_import_path,
    mlp,
    mlp_discriminator,
    mlp_nets,
    resnet_decoder_grid,
    resnet_discriminator,
    resnet_encoder_grid,
    resnet_nets,
    resolve_net,
    split_import_path,
)
