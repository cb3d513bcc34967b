"""sslfer-train: placeholder until the trainer lands."""
import click


@click.group(help="Contrastive pretraining on sslfer shards.")
def main():
    pass
