"""sslfer-manifest: placeholder until the manifest tools land."""
import click


@click.group(help="Manifest of a shard set: verify, inspect, merge.")
def main():
    pass
