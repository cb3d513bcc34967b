"""sslfer-prep: placeholder until the preprocessing pipeline lands."""
import click


@click.group(help="Preprocess face videos into HDF5 shards (detection, landmarks, swaps, patches, descriptors).")
def main():
    pass
