"""Console output of the command-line tools: results on stdout, warnings and errors on stderr."""
import logging

# Importing fairseq logs an INFO line about tensorboardX from its text_to_speech task; neither the
# tools nor fairseq-train (which uses torch.utils.tensorboard) need it.
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)


def quiet_logging() -> None:
    """Only warnings and errors reach stderr, whatever importing fairseq did to logging (one of its
    modules sets the root logger to DEBUG, which lets every library's chatter through)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # when nothing configured it yet
    logging.getLogger().setLevel(logging.WARNING)
