"""sslfer-eval: placeholder until evaluation lands."""
import click


@click.group(help="Downstream evaluation of pretrained backbones.")
def main():
    pass
