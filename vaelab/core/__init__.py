"""The foundation every layer stands on: errors, registries, atomic files and safetensors,
devices and generators, shard-independent noise, image arrays."""

