"""Lightning side of dsf: layers, models, data, training CLI."""
